#!/usr/bin/env bash
# Cluster figures for BENCHMARKS.md: a release build of 3 voters and 2 frontends behind nginx
# (deploy/local/cluster.sh), then
#   - manifest PUT latency through the load balancer at concurrency 1 and 32,
#   - manifest GET req/s through the load balancer (wrk), and against one single node,
#   - time from a leader kill to the first acknowledged write, over 10 kills (berth-chaos).
# Usage: tests/bench/cluster.sh [WORKDIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
work="${1:-$(mktemp -d)}"
cargo build --release -q -p berth-node -p berth-tests -p berth-chaos
bin=target/release
export BERTH_BIN="$PWD/$bin/berth"
deploy/local/cluster.sh up --dir "$work/cluster" --voters 3 --frontends 2
trap 'deploy/local/cluster.sh down --dir "$work/cluster" >/dev/null; kill $single 2>/dev/null || true' EXIT
lb="$(cat "$work/cluster/lb")"

echo "== manifest PUT latency through the load balancer"
"$bin/berth-put-latency" "$lb" 1 500
"$bin/berth-put-latency" "$lb" 32 5000

echo "== manifest GET through the load balancer (wrk -t2 -c64 -d10s)"
"$bin/berth-put-latency" "$lb" 1 1 >/dev/null
tag="$(curl -s "$lb/v2/bench/put/tags/list" | python3 -c 'import json,sys; print(json.load(sys.stdin)["tags"][0])')"
accept="Accept: application/vnd.oci.image.manifest.v1+json"
wrk -t2 -c64 -d10s -H "$accept" "$lb/v2/bench/put/manifests/$tag" | grep -E "Requests/sec|Latency"

echo "== manifest GET on a single node (same wrk command)"
REGISTRY_HTTP_ADDR=127.0.0.1:5999 REGISTRY_BERTH_GRPCADDR=127.0.0.1:5998 "$BERTH_BIN" serve --data-dir "$work/single" 2>"$work/single.log" &
single=$!
for _ in $(seq 1 100); do curl -fso /dev/null http://127.0.0.1:5999/v2/ && break; sleep 0.1; done
"$bin/berth-put-latency" http://127.0.0.1:5999 1 1 >/dev/null
tag="$(curl -s http://127.0.0.1:5999/v2/bench/put/tags/list | python3 -c 'import json,sys; print(json.load(sys.stdin)["tags"][0])')"
wrk -t2 -c64 -d10s -H "$accept" "http://127.0.0.1:5999/v2/bench/put/manifests/$tag" | grep -E "Requests/sec|Latency"

echo "== leader kill to first acknowledged write, 10 kills"
"$bin/berth-chaos" leader-kill --dir "$work/cluster" --kills 10 --pushers 2 --down-ms 2000
