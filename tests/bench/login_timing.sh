#!/usr/bin/env bash
# Does a failed login tell an unknown user from a known one by its time? Times N token
# requests each (curl's time_total, sequential, one release node issuing its own tokens)
# for: a known user with a wrong password, an unknown user, and an unknown user whose name
# looks like a token login (gitlab-ci-token); prints the median and 90th percentile of each.
# Also against htpasswd mode. The login limiter is kept out of the way by sending each
# request from a loopback address that has never failed before (127.<run>.<i>.<j>); the
# statuses are printed so that a 429 cannot pass for a fast refusal.
#   tests/bench/login_timing.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200}
WORK=${WORK:-$(mktemp -d /var/tmp/berth-login-timing.XXXX)}
cargo build --release -q -p berth-node --bin berth
PASS=timing-admin-password
printf 'alice:%s\n' "$(htpasswd -nbB -C 10 x alice-password | cut -d: -f2)" >"$WORK/htpasswd" 2>/dev/null ||
  { command -v htpasswd >/dev/null || apt-get install -y -qq apache2-utils; printf 'alice:%s\n' "$(htpasswd -nbB -C 10 x alice-password | cut -d: -f2)" >"$WORK/htpasswd"; }

REGISTRY_HTTP_ADDR=127.0.0.1:5121 REGISTRY_AUTH_TOKEN_SERVICE=container_registry REGISTRY_BERTH_ADMIN_PASSWORD=$PASS \
  target/release/berth serve --data-dir "$WORK/issuer" >"$WORK/issuer.log" 2>&1 &
A=$!
REGISTRY_HTTP_ADDR=127.0.0.1:5122 REGISTRY_AUTH_HTPASSWD_PATH="$WORK/htpasswd" REGISTRY_AUTH_HTPASSWD_REALM=r \
  target/release/berth serve --data-dir "$WORK/htpasswd-node" >"$WORK/htpasswd.log" 2>&1 &
B=$!
trap 'kill $A $B 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 2

RUN=0
measure() { # label url user password
  local i out=()
  RUN=$((RUN + 1))
  for ((i = 0; i < N; i++)); do
    out+=("$(curl -s -o /dev/null --interface "127.$RUN.$((i / 200 + 1)).$((i % 200 + 2))" -w '%{http_code} %{time_total}' -u "$3:$4" "$2")")
  done
  printf '%s\n' "${out[@]}" | python3 -c '
import sys, statistics, collections
rows = [l.split() for l in sys.stdin]
codes = collections.Counter(c for c, _ in rows)
t = sorted(float(x) * 1000 for _, x in rows)
print(f"'"$1"': median {statistics.median(t):6.1f} ms  p90 {t[int(len(t) * 0.9)]:6.1f} ms  (n={len(t)}, statuses {dict(codes)})")'
}

TOKEN="http://127.0.0.1:5121/jwt/auth?service=container_registry&scope=repository:a/b:pull"
echo "== Berth issuer (/jwt/auth)"
measure "known user, wrong password " "$TOKEN" root wrong-password-1
measure "unknown user               " "$TOKEN" nobody-here wrong-password-1
measure "gitlab-ci-token, bad secret" "$TOKEN" gitlab-ci-token wrong-password-1
echo "== htpasswd (/v2/)"
measure "known user, wrong password " http://127.0.0.1:5122/v2/ alice wrong-password-1
measure "unknown user               " http://127.0.0.1:5122/v2/ nobody-here wrong-password-1
