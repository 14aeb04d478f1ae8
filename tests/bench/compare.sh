#!/usr/bin/env bash
# Berth against Docker Distribution 2.8 (Debian's docker-registry), one run, same machine,
# both on the local disk under $WORK. Prints every figure; BENCHMARKS.md records them.
#   tests/bench/compare.sh [SIZE_MIB] [TAGS]
set -euo pipefail
cd "$(dirname "$0")/../.."
SIZE=${1:-1024}
TAGS=${2:-10000}
WORK=${WORK:-$(mktemp -d /var/tmp/berth-bench.XXXX)}
command -v docker-registry >/dev/null || apt-get install -y -qq docker-registry
command -v wrk >/dev/null || apt-get install -y -qq wrk
cargo build --release -q -p berth-node -p berth-tests --bin berth --bin berth-bench
BENCH=target/release/berth-bench

cat > "$WORK/dist.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage:
  filesystem: {rootdirectory: $WORK/dist}
  delete: {enabled: true}
http: {addr: 127.0.0.1:5101}
YML
docker-registry serve "$WORK/dist.yml" >"$WORK/dist.log" 2>&1 &
DIST=$!
REGISTRY_HTTP_ADDR=127.0.0.1:5102 REGISTRY_LOG_LEVEL=error target/release/berth serve --data-dir "$WORK/berth" >"$WORK/berth.log" 2>&1 &
BERTH=$!
trap 'kill $DIST $BERTH 2>/dev/null; rm -rf "$WORK"' EXIT
sleep 2

for target in "distribution http://127.0.0.1:5101" "berth http://127.0.0.1:5102"; do
  set -- $target
  echo "== $1"
  sync
  $BENCH "$2" "$SIZE" "$TAGS"
  echo -n "manifest_get_wrk_c64 "
  wrk -t2 -c64 -d10s -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$2/v2/bench/app/manifests/bench" | awk '/Requests\/sec/ {print $2 " req/s"} /Latency/ {lat=$2} END {}'
  echo "peak_rss_kib $(grep VmHWM /proc/$([ "$1" = berth ] && echo $BERTH || echo $DIST)/status | awk '{print $2}')"
done
