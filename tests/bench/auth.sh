#!/usr/bin/env bash
# The cost of access control: the same berth-bench run and manifest GET load against Berth
# serving everyone and Berth issuing its own tokens (every request carries a registry token
# and is checked against identity, and leaves an audit line). One run, same machine.
#   tests/bench/auth.sh [SIZE_MIB] [TAGS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=${1:-1024}
TAGS=${2:-2000}
WORK=${WORK:-$(mktemp -d /var/tmp/berth-auth-bench.XXXX)}
mkdir -p "$WORK"
command -v wrk >/dev/null || apt-get install -y -qq wrk
cargo build --release -q -p berth-node -p berth-tests --bin berth --bin berth-bench
BENCH=target/release/berth-bench
PASS=bench-admin-password

REGISTRY_HTTP_ADDR=127.0.0.1:5111 target/release/berth serve --data-dir "$WORK/open" >"$WORK/open.log" 2>&1 &
OPEN=$!
REGISTRY_HTTP_ADDR=127.0.0.1:5112 REGISTRY_AUTH_TOKEN_SERVICE=container_registry REGISTRY_BERTH_ADMIN_PASSWORD=$PASS \
  target/release/berth serve --data-dir "$WORK/auth" >"$WORK/auth.log" 2>&1 &
AUTH=$!
trap 'kill $OPEN $AUTH 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 2

token() {
  curl -sf -u "root:$PASS" "http://127.0.0.1:5112/jwt/auth?service=container_registry&scope=repository:bench/app:pull,push&scope=repository:bench/tags:pull,push" |
    sed 's/.*"token":"\([^"]*\)".*/\1/'
}

echo "== open"
$BENCH http://127.0.0.1:5111 "$SIZE" "$TAGS"
echo "== token auth"
BENCH_AUTHORIZATION="Bearer $(token)" $BENCH http://127.0.0.1:5112 "$SIZE" "$TAGS"

ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json'
echo "== manifest GET, open"
wrk -t2 -c32 -d10s -H "$ACCEPT" http://127.0.0.1:5111/v2/bench/app/manifests/bench | grep -E "Requests/sec|Latency"
echo "== manifest GET, token auth"
wrk -t2 -c32 -d10s -H "$ACCEPT" -H "Authorization: Bearer $(token)" http://127.0.0.1:5112/v2/bench/app/manifests/bench | grep -E "Requests/sec|Latency"
