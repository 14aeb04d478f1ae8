#!/usr/bin/env bash
# Bulk tag deletion through GitLab's API (issue 14), for BENCHMARKS.md: one release node that
# issues its own tokens; COUNT (default 10,000) tags pushed to project bench/put, then one
# `DELETE /projects/:id/registry/repositories/:rid/tags` with name_regex_delete=.* and the time
# until the tag list is empty.
# Usage: tests/bench/bulk-delete.sh [--count N] [--dir WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
count=10000; work=""
while (($#)); do
  case "$1" in
    --count) count="$2"; shift 2 ;;
    --dir) work="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
source tests/bench/lib.sh
export REGISTRY_BERTH_CLUSTERTOKENFILE="$work/cluster-token"
head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$REGISTRY_BERTH_CLUSTERTOKENFILE"
chmod 600 "$REGISTRY_BERTH_CLUSTERTOKENFILE"
grpc=127.0.0.1:$((20000 + RANDOM % 10000))
REGISTRY_HTTP_ADDR=127.0.0.1:0 REGISTRY_BERTH_GRPCADDR="$grpc" REGISTRY_AUTH_TOKEN_SERVICE=container_registry \
  REGISTRY_BERTH_ADMIN_PASSWORD=bench-password-1 "$bin/berth" serve --data-dir "$work/data" >"$work/node.log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 1 400); do
  url="$(sed -n 's/^berth: listening on //p' "$work/node.log")"
  [[ -n "$url" ]] && break
  sleep 0.05
done
until curl -s -o /dev/null "$url/v2/"; do sleep 0.1; done
T="$("$bin/berth" admin --node "$grpc" create-token --username root --scopes api)"
api() { curl -sf -H "PRIVATE-TOKEN: $T" -H 'Content-Type: application/json' "$@"; }
pid_project="$(api -d '{"path":"bench/put","visibility":"private"}' "$url/api/v4/projects" | sed 's/.*"id":\([0-9]*\).*/\1/')"
jwt="$(curl -sf -u "root:$T" "$url/jwt/auth?service=container_registry&scope=repository:bench/put:pull,push" | sed 's/.*"token":"\([^"]*\)".*/\1/')"
echo "== $count tags in bench/put"
BENCH_AUTHORIZATION="Bearer $jwt" "$bin/berth-put-latency" "$url" 32 "$count"
rid="$(api "$url/api/v4/projects/$pid_project/registry/repositories" | sed 's/.*"id":\([0-9]*\).*/\1/')"
total() { curl -sf -o /dev/null -D - -H "PRIVATE-TOKEN: $T" "$url/api/v4/projects/$pid_project/registry/repositories/$rid/tags?per_page=1" | awk 'tolower($1) == "x-total:" {print $2+0}'; }
echo "tags listed: $(total)"
t0=$(date +%s.%N)
api -X DELETE -d '{"name_regex_delete":".*"}' "$url/api/v4/projects/$pid_project/registry/repositories/$rid/tags" >/dev/null
while (( $(total) > 0 )); do sleep 0.2; done
t1=$(date +%s.%N)
echo "bulk delete: $count tags in $(echo "$t1 - $t0" | bc) s"
echo "RSS $(( $(awk '/VmRSS/ {print $2}' /proc/$pid/status) / 1024 )) MB"
