#!/usr/bin/env bash
# Garbage collection (issue 14), for BENCHMARKS.md: one release node on the filesystem store.
#  1. uploads COUNT (default 10,000) 1 KiB blobs that no manifest uses, with gc.reviewafter
#     24h, and measures manifest PUT latency and manifest GET latency with nothing to sweep;
#  2. restarts the node with gc.reviewafter 0s and measures the same while the sweep runs,
#     and how long the sweep takes until the store holds none of those blobs.
# Usage: tests/bench/gc.sh [--count N] [--dir WORKDIR] [--s3]. --s3 keeps the blobs in a local
# S3-compatible server (moto_server, from PyPI's moto[server]) instead of the filesystem.
# BERTH_BIN=path measures another build.
set -euo pipefail
cd "$(dirname "$0")/../.."
count=10000; work=""; s3=""
while (($#)); do
  case "$1" in
    --s3) s3=1; shift ;;
    --count) count="$2"; shift 2 ;;
    --dir) work="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
source tests/bench/lib.sh
data="$work/data"
pid=""; moto=""
trap '[[ -n "$pid" ]] && kill $pid 2>/dev/null; [[ -n "$moto" ]] && kill $moto 2>/dev/null || true' EXIT
store_env=()
if [[ -n "$s3" ]]; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  moto_server -H 127.0.0.1 -p "$port" >"$work/moto.log" 2>&1 &
  moto=$!
  until curl -sf -X PUT "http://127.0.0.1:$port/berth-bench" -o /dev/null; do sleep 0.2; done
  store_env=(REGISTRY_STORAGE_S3_REGION=us-east-1 REGISTRY_STORAGE_S3_BUCKET=berth-bench
    REGISTRY_STORAGE_S3_ACCESSKEY=test REGISTRY_STORAGE_S3_SECRETKEY=test
    REGISTRY_STORAGE_S3_REGIONENDPOINT="http://127.0.0.1:$port" REGISTRY_STORAGE_S3_FORCEPATHSTYLE=true
    REGISTRY_STORAGE_S3_ROOTDIRECTORY=/registry)
fi

start() {  # start REVIEWAFTER
  : >"$work/node.log"
  REGISTRY_HTTP_ADDR="${addr:-127.0.0.1:0}" REGISTRY_HTTP_DEBUG_ADDR="${debug:-127.0.0.1:0}" \
    REGISTRY_GC_REVIEWAFTER="$1" REGISTRY_GC_BLOBS_INTERVAL=1s REGISTRY_GC_MANIFESTS_INTERVAL=1s \
    env "${store_env[@]}" "$BERTH_BIN" serve --data-dir "$data" >>"$work/node.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 400); do
    url="$(sed -n 's/^berth: listening on //p' "$work/node.log")"
    dbg="$(sed -n 's/^berth: debug listening on //p' "$work/node.log")"
    [[ -n "$url" && -n "$dbg" ]] && break
    sleep 0.05
  done
  addr="${url#http://}"; debug="${dbg#http://}"
  until curl -sf -o /dev/null "$url/v2/"; do sleep 0.1; done
}
metric() { curl -s "$dbg/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
blobs() {  # files (or objects) in the blob store
  if [[ -n "$s3" ]]; then
    python3 -c 'import boto3,sys; s3=boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"); print(sum(p.get("KeyCount",0) for p in s3.get_paginator("list_objects_v2").paginate(Bucket="berth-bench", Prefix="registry/blobs/")))' "http://127.0.0.1:$port"
  else
    find "$data/storage/blobs" -type f 2>/dev/null | wc -l
  fi
}
latency() {  # the figures of one phase
  "$bin/berth-put-latency" "$url" 8 2000
  tag="$(curl -s "$url/v2/bench/put/tags/list?n=1" | sed 's/.*"tags":\["\([^"]*\)".*/\1/')"
  wrk -t2 -c16 -d5s --latency -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    "$url/v2/bench/put/manifests/$tag" | awk '/Requests\/sec/ {print "manifest_get req_per_s", $2} / 99%/ {print "manifest_get p99", $2}'
}

echo "== $count unreferenced blobs on $([[ -n "$s3" ]] && echo "S3 (moto)" || echo "the filesystem"), server $BERTH_BIN"
start 24h
"$bin/berth-scale" garbage "$url" "$count" 16
echo "store files: $(blobs); queue: $(metric berth_gc_queue_length)"
echo "-- without a sweep"
latency

kill $pid; wait $pid 2>/dev/null || true
start 0s
before="$(blobs)"
t0=$(date +%s.%N)
echo "-- during the sweep (store files $before, queue $(metric berth_gc_queue_length))"
latency
swept() { metric 'berth_gc_swept_total{kind="content",result="deleted"}' | grep . || echo 0; }
while (( $(swept) < count )); do sleep 0.2; done
# The last batch is marked; its files go next (the latency run above added 3 files: a config,
# a layer and a manifest).
while (( $(blobs) > before - count + 3 )); do sleep 0.1; done
t1=$(date +%s.%N)
echo "sweep: $count blobs in $(echo "$t1 - $t0" | bc) s; store files $before -> $(blobs); deleted bytes $(metric berth_gc_deleted_bytes_total); queue $(metric berth_gc_queue_length)"
echo "RSS $(( $(awk '/VmRSS/ {print $2}' /proc/$pid/status) / 1024 )) MB"
