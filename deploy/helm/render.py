#!/usr/bin/env python3
"""Renders deploy/helm/berth the way `helm template` does, for machines without helm.

    deploy/helm/render.py [--release NAME] [--set key.path=value ...] [-f values.yaml] [CHART]

It implements the part of Helm's template language the chart uses, and refuses anything else
(an unknown function or action is an error, never silently passed through), so the chart
cannot drift into constructs this path has not been tested with:

    {{ .Values.a.b }}  {{ .Release.Name }}  {{ $.Release.Name }}  {{ $var }}  "strings"  42
    pipelines with quote, toYaml, nindent N, indent N, default X, int, until, not, eq
    {{ if X }} ... {{ else }} ... {{ end }}   {{ range $i, $v := X }} ... {{ end }}
    {{- and -}} trimming

CI renders the chart with it, checks the result with kubernetes-validate, and checks that
deploy/kubernetes (the kustomize base) is the chart rendered with its default values.
"""

import argparse
import copy
import os
import re
import sys

import yaml

ACTION = re.compile(r"\{\{(-?)\s*(.*?)\s*(-?)\}\}", re.S)


class TemplateError(Exception):
    pass


def tokenize(src):
    """Text and actions, with Go's trim markers applied to the neighbouring text."""
    out, pos = [], 0
    for m in ACTION.finditer(src):
        text = src[pos:m.start()]
        if m.group(1):
            text = text.rstrip(" \t\r\n")
        out.append(("text", text))
        out.append(("action", m.group(2), bool(m.group(3))))
        pos = m.end()
    out.append(("text", src[pos:]))
    # A right trim marker eats the whitespace that starts the next text.
    for i, tok in enumerate(out):
        if tok[0] == "action" and tok[2] and i + 1 < len(out):
            out[i + 1] = ("text", out[i + 1][1].lstrip(" \t\r\n"))
    return out


def parse(tokens):
    """A tree of ("text", s), ("out", expr), ("if", expr, then, else), ("range", vars, expr, body)."""
    pos = 0

    def block(stop):
        nonlocal pos
        nodes = []
        while pos < len(tokens):
            tok = tokens[pos]
            pos += 1
            if tok[0] == "text":
                nodes.append(("text", tok[1]))
                continue
            body = tok[1]
            word = body.split(None, 1)[0] if body else ""
            if word in stop:
                return nodes, word
            if word.startswith("/*"):
                continue
            if word == "if":
                then, ended = block({"else", "end"})
                other = []
                if ended == "else":
                    other, _ = block({"end"})
                nodes.append(("if", body[2:].strip(), then, other))
            elif word == "range":
                m = re.match(r"range\s+(\$\w+)\s*(?:,\s*(\$\w+)\s*)?:=\s*(.+)$", body, re.S)
                if not m:
                    raise TemplateError(f"unsupported range: {body!r}")
                inner, _ = block({"end"})
                nodes.append(("range", (m.group(1), m.group(2)), m.group(3), inner))
            elif word in ("else", "end"):
                raise TemplateError(f"unexpected {word}")
            elif word in ("define", "template", "include", "with", "block", "tpl", "required", "fail", "lookup"):
                raise TemplateError(f"{word} is not supported by this renderer")
            else:
                nodes.append(("out", body))
        if stop:
            raise TemplateError(f"missing {{{{ end }}}} (wanted one of {sorted(stop)})")
        return nodes, None

    nodes, _ = block(set())
    return nodes


def to_yaml(v):
    if v is None or v == {} or v == []:
        return ""
    return yaml.safe_dump(v, default_flow_style=False, sort_keys=True).rstrip("\n")


def quote(v):
    s = "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def go_str(v):
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (dict, list)):
        raise TemplateError(f"cannot print {type(v).__name__} {v!r} (use toYaml)")
    return str(v)


def truthy(v):
    return bool(v)


def indent(n, s):
    pad = " " * int(n)
    return "\n".join(pad + line for line in str(s).split("\n"))


FUNCS = {
    "quote": lambda v: quote(v),
    "toYaml": lambda v: to_yaml(v),
    "nindent": lambda n, s: "\n" + indent(n, s),
    "indent": lambda n, s: indent(n, s),
    "default": lambda d, v=None: v if truthy(v) else d,
    "int": lambda v: int(v),
    "until": lambda n: list(range(int(n))),
    "not": lambda v: not truthy(v),
    "eq": lambda a, b: a == b,
}


class Scope:
    def __init__(self, root, dot, variables):
        self.root, self.dot, self.vars = root, dot, variables

    def field(self, base, path):
        v = base
        for part in [p for p in path.split(".") if p]:
            if not isinstance(v, dict):
                raise TemplateError(f"cannot take .{part} of {v!r}")
            v = v.get(part)
        return v

    def term(self, t):
        t = t.strip()
        if t.startswith("(") and t.endswith(")"):
            return self.pipeline(t[1:-1])
        if t.startswith('"'):
            return yaml.safe_load(t)
        if re.fullmatch(r"-?\d+", t):
            return int(t)
        if t in ("true", "false"):
            return t == "true"
        if t.startswith("$."):
            return self.field(self.root, t[1:])
        if t.startswith("$"):
            if t not in self.vars:
                raise TemplateError(f"undefined variable {t}")
            return self.vars[t]
        if t.startswith("."):
            return self.field(self.dot, t)
        raise TemplateError(f"unsupported term {t!r}")

    def command(self, words, piped):
        args_src = split_words(words)
        name = args_src[0]
        if name in FUNCS:
            args = [self.term(a) for a in args_src[1:]]
            if piped is not None:
                args.append(piped[0])
            return FUNCS[name](*args)
        if len(args_src) == 1 and piped is None:
            return self.term(name)
        raise TemplateError(f"unsupported function {name!r}")

    def pipeline(self, src):
        value = None
        for i, stage in enumerate(split_pipes(src)):
            value = self.command(stage, None if i == 0 else (value,))
        return value


def split_top(src, is_sep):
    """Splits `src` at the characters `is_sep` accepts, outside quotes and parentheses."""
    parts, depth, cur, quoted = [], 0, "", False
    for c in src:
        if c == '"':
            quoted = not quoted
        if not quoted:
            depth += c == "("
            depth -= c == ")"
            if depth == 0 and is_sep(c):
                parts.append(cur)
                cur = ""
                continue
        cur += c
    parts.append(cur)
    return parts


def split_pipes(src):
    return [p.strip() for p in split_top(src, lambda c: c == "|")]


def split_words(src):
    return [w for w in split_top(src, str.isspace) if w]


def execute(nodes, scope, out):
    for n in nodes:
        kind = n[0]
        if kind == "text":
            out.append(n[1])
        elif kind == "out":
            out.append(go_str(scope.pipeline(n[1])))
        elif kind == "if":
            execute(n[2] if truthy(scope.pipeline(n[1])) else n[3], scope, out)
        elif kind == "range":
            (kvar, vvar), src, body = n[1], n[2], n[3]
            seq = scope.pipeline(src) or []
            items = seq.items() if isinstance(seq, dict) else enumerate(seq)
            for k, v in items:
                variables = dict(scope.vars)
                if vvar is None:
                    variables[kvar] = v
                else:
                    variables[kvar], variables[vvar] = k, v
                execute(body, Scope(scope.root, v, variables), out)


def merge(base, over):
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            merge(base[k], v)
        else:
            base[k] = v
    return base


def set_value(values, assignment):
    path, _, raw = assignment.partition("=")
    node = values
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = yaml.safe_load(raw) if raw else ""


def render(chart, release, values):
    with open(os.path.join(chart, "Chart.yaml")) as f:
        meta = yaml.safe_load(f)
    root = {
        "Values": values,
        "Release": {"Name": release, "Namespace": "default", "Service": "Helm"},
        "Chart": {"Name": meta["name"], "Version": meta["version"], "AppVersion": meta.get("appVersion", "")},
    }
    docs = []
    tdir = os.path.join(chart, "templates")
    for name in sorted(os.listdir(tdir)):
        if not name.endswith((".yaml", ".yml")):
            continue
        with open(os.path.join(tdir, name)) as f:
            src = f.read()
        out = []
        try:
            execute(parse(tokenize(src)), Scope(root, root, {"$": root}), out)
        except TemplateError as e:
            raise TemplateError(f"templates/{name}: {e}") from None
        text = "".join(out)
        for doc in re.split(r"^---\s*$", text, flags=re.M):
            if yaml.safe_load(doc) is not None:
                docs.append(f"# Source: {meta['name']}/templates/{name}\n{doc.strip()}\n")
    return "---\n".join(docs)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description="Render the Berth chart without helm.")
    ap.add_argument("chart", nargs="?", default=os.path.join(here, "berth"))
    ap.add_argument("--release", default="berth")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    with open(os.path.join(a.chart, "values.yaml")) as f:
        values = yaml.safe_load(f) or {}
    for p in a.values:
        with open(p) as f:
            merge(values, yaml.safe_load(f) or {})
    for s in a.set:
        set_value(values, s)
    try:
        sys.stdout.write(render(a.chart, a.release, copy.deepcopy(values)))
    except TemplateError as e:
        sys.exit(f"render.py: {e}")


if __name__ == "__main__":
    main()
