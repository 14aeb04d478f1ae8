#!/usr/bin/env bash
# Metadata at scale (issue 10), for BENCHMARKS.md. A release build, filled through the HTTP API
# by berth-scale (tests/src/bin/berth-scale.rs), then:
#   - RSS of every node after the fill,
#   - tag-page, catalog-page and manifest-GET latencies (berth-scale measure) and manifest
#     GET req/s (wrk -t2 -c32 -d10s),
#   - the snapshot's size and build time (the node log's "snapshot built" line),
#   - one voter: restart time (SIGTERM, start, first manifest GET answered);
#     three voters: a fourth voter joins and catches up (snapshot + log), timed.
# Usage: tests/bench/scale.sh [--voters 1|3] [--repos N] [--manifests N] [--tags N] [--big N]
#                             [--concurrency N] [--dir WORKDIR]
# Defaults are the issue's figures: 10,000 repositories, 200,000 manifests, 1,000,000 tags of
# which 100,000 in one repository, concurrency 32.
set -euo pipefail
cd "$(dirname "$0")/../.."
voters=1; repos=10000; manifests=200000; tags=1000000; big=100000; conc=32; work=""
while (($#)); do
  case "$1" in
    --voters) voters="$2"; shift 2 ;;
    --repos) repos="$2"; shift 2 ;;
    --manifests) manifests="$2"; shift 2 ;;
    --tags) tags="$2"; shift 2 ;;
    --big) big="$2"; shift 2 ;;
    --concurrency) conc="$2"; shift 2 ;;
    --dir) work="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
source tests/bench/lib.sh
export BERTH_BIN  # the server under test (another build to compare)
py="$(command -v /usr/bin/python3 || command -v python3)"
free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
rss() { awk '/VmRSS/ {printf "%.0f MB", $2/1024}' "/proc/$1/status"; }

wait_ready() {  # URL: until GET /v2/ answers 200
  for _ in $(seq 1 600); do
    [[ "$(curl -so /dev/null -w '%{http_code}' "$1/v2/")" == 200 ]] && return 0
    sleep 0.05
  done
  echo "$1 did not become ready" >&2; return 1
}

if [[ "$voters" == 1 ]]; then
  http="127.0.0.1:$(free_port)"; grpc="127.0.0.1:$(free_port)"
  start_single() {
    REGISTRY_HTTP_ADDR="$http" REGISTRY_BERTH_GRPCADDR="$grpc" REGISTRY_HTTP_DEBUG_ADDR=127.0.0.1:0 \
      "$BERTH_BIN" serve --data-dir "$work/single" >>"$work/single.log" 2>&1 &
    pid=$!
  }
  start_single
  trap 'kill $pid 2>/dev/null || true' EXIT
  url="http://$http"
  wait_ready "$url"
  nodes=("single $pid $work/single")
else
  deploy/local/cluster.sh up --dir "$work/cluster" --voters 3 --frontends 1 >/dev/null
  export REGISTRY_BERTH_CLUSTERTOKENFILE="$work/cluster/cluster-token"  # for `berth cluster`
  trap 'deploy/local/cluster.sh down --dir "$work/cluster" >/dev/null; kill ${joiner:-} 2>/dev/null || true' EXIT
  url="$(cat "$work/cluster/lb")"
  nodes=()
  while read -r n role pid _ _; do nodes+=("$role-$n $pid $work/cluster/node$n/data"); done <"$work/cluster/nodes"
fi

echo "== before: $(for n in "${nodes[@]}"; do set -- $n; echo -n "$1 $(rss "$2"); "; done)"
echo "== fill: $repos repositories, $manifests manifests, $tags tags ($big in one), concurrency $conc"
"$bin/berth-scale" fill "$url" "$repos" "$manifests" "$tags" "$big" "$conc"
echo "== RSS after the fill"
for n in "${nodes[@]}"; do set -- $n; echo "$1: $(rss "$2")"; done

echo "== reads"
"$bin/berth-scale" measure "$url" "$repos" "$big"
accept="Accept: application/vnd.oci.image.manifest.v1+json"
wrk -t2 -c32 -d10s -H "$accept" "$url/v2/scale/r00000/manifests/v000000" | grep -E "Requests/sec|Latency"

echo "== snapshot"
for n in "${nodes[@]}"; do
  set -- $n
  [[ -d "$3/raft/state" ]] || continue
  # Force one now so its size and time reflect the whole state.
  snap="$(ls -1 "$3"/raft/state/snapshots/*.snap 2>/dev/null | tail -1 || true)"
  echo "$1: state.redb $(du -m "$3/raft/state/state.redb" | cut -f1) MB, snapshot ${snap:+$(du -m "$snap" | cut -f1) MB}, log.redb $(du -m "$3/raft/log.redb" | cut -f1) MB"
done
grep -h "snapshot built" "$work"/single.log "$work"/cluster/node*/log 2>/dev/null | tail -3 | sed -E 's/\x1b\[[0-9;]*m//g' || true

if [[ "$voters" == 1 ]]; then
  echo "== restart"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
  t0=$(date +%s.%N)
  start_single
  for _ in $(seq 1 2000); do
    [[ "$(curl -so /dev/null -w '%{http_code}' -H "$accept" "$url/v2/scale/r00000/manifests/v000000")" == 200 ]] && break
    sleep 0.01
  done
  echo "restart to first manifest GET: $(echo "$(date +%s.%N) - $t0" | bc) s; RSS $(rss "$pid")"
else
  echo "== a fourth voter joins"
  grpcs="$(awk '$2 == "voter" {print $5}' "$work/cluster/nodes" | paste -sd,)"
  g4="127.0.0.1:$(free_port)"; h4="127.0.0.1:$(free_port)"
  leader_grpc="$(awk '$2 == "voter" {print $5; exit}' "$work/cluster/nodes")"
  applied() { "$BERTH_BIN" cluster status --node "$leader_grpc" 2>/dev/null | awk -v id="$1" '$1 == "node" && $2 == id { for (i = 3; i <= NF; i++) if ($i ~ /^applied=/) { sub("applied=", "", $i); print $i } }'; }
  target="$(applied 1)"
  mkdir -p "$work/node4"
  t0=$(date +%s.%N)
  REGISTRY_HTTP_ADDR="$h4" REGISTRY_BERTH_GRPCADDR="$g4" REGISTRY_BERTH_NODEID=4 REGISTRY_BERTH_JOIN="$grpcs,$g4" \
    REGISTRY_HTTP_DEBUG_ADDR=127.0.0.1:0 \
    REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY="$work/cluster/blobs" \
    "$BERTH_BIN" serve --data-dir "$work/node4/data" >"$work/node4/log" 2>&1 &
  joiner=$!
  for _ in $(seq 1 3000); do
    got="$(applied 4)"
    [[ -n "$got" && "$got" -ge "$target" ]] && break
    sleep 0.05
  done
  echo "join to caught up (applied $got >= $target): $(echo "$(date +%s.%N) - $t0" | bc) s; RSS $(rss "$joiner")"
  grep -h "snapshot installed" "$work/node4/log" | sed -E 's/\x1b\[[0-9;]*m//g' | tail -1 || true
fi
