#!/usr/bin/env bash
# The cost of the access log: manifest GETs (wrk -t2 -c32 -d10s) against one release node
# with the access log on (the default) and then with log.accesslog.disabled, one at a time,
# each logging to a file as a service would.
#   tests/bench/access_log.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
WORK=${WORK:-$(mktemp -d /var/tmp/berth-access-bench.XXXX)}
command -v wrk >/dev/null || apt-get install -y -qq wrk
cargo build --release -q -p berth-node --bin berth
trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$WORK"' EXIT

push() { # url: a config blob and a manifest naming it, tagged bench/app:1
  local cfg='{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
  local d="sha256:$(printf '%s' "$cfg" | sha256sum | cut -d' ' -f1)"
  curl -sf -X POST --data-binary "$cfg" "$1/v2/bench/app/blobs/uploads/?digest=$d" >/dev/null
  local m='{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"'$d'","size":'${#cfg}'},"layers":[]}'
  curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "$m" "$1/v2/bench/app/manifests/1" >/dev/null
}

run() { # label, extra env...
  local label="$1"; shift
  env REGISTRY_HTTP_ADDR=127.0.0.1:5131 REGISTRY_HTTP_DEBUG_ADDR=127.0.0.1:0 "$@" \
    target/release/berth serve --data-dir "$WORK/$label" 2>"$WORK/$label.log" &
  local pid=$!
  for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:5131/v2/ && break; sleep 0.1; done
  push http://127.0.0.1:5131
  echo "== $label"
  wrk -t2 -c32 -d10s -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    http://127.0.0.1:5131/v2/bench/app/manifests/1 | grep -E "Requests/sec|Latency"
  kill $pid; wait $pid 2>/dev/null || true
}

run access-log-on
run access-log-off REGISTRY_LOG_ACCESSLOG_DISABLED=true
