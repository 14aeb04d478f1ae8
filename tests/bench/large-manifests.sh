#!/usr/bin/env bash
# Large manifests (issue 10), for BENCHMARKS.md: push COUNT manifests of BYTES each (default 40
# of 3 MiB) to a release build and report what they cost each voter: RSS (now and peak), the
# Raft log and state database sizes, and the blob store. Manifest bodies are content, so they
# should land in the blob store and cost the metadata almost nothing.
# Usage: tests/bench/large-manifests.sh [--voters 1|3] [--count N] [--bytes N] [--dir WORKDIR]
# BERTH_BIN=path/to/berth measures another build's server.
set -euo pipefail
cd "$(dirname "$0")/../.."
voters=1; count=40; bytes=$((3 << 20)); work=""
while (($#)); do
  case "$1" in
    --voters) voters="$2"; shift 2 ;;
    --count) count="$2"; shift 2 ;;
    --bytes) bytes="$2"; shift 2 ;;
    --dir) work="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
source tests/bench/lib.sh
export BERTH_BIN
kib() { awk -v k="$2" '$1 == k":" {print $2}' "/proc/$1/status"; }
mb() { du -sm "$1" 2>/dev/null | cut -f1; }

if [[ "$voters" == 1 ]]; then
  REGISTRY_HTTP_ADDR=127.0.0.1:0 "$BERTH_BIN" serve --data-dir "$work/single" >"$work/single.log" 2>&1 &
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  for _ in $(seq 1 200); do
    url="$(sed -n 's/^berth: listening on //p' "$work/single.log")"
    [[ -n "$url" ]] && break
    sleep 0.05
  done
  nodes=("single $pid $work/single")
else
  BERTH_BIN="$BERTH_BIN" deploy/local/cluster.sh up --dir "$work/cluster" --voters 3 --frontends 0 >/dev/null
  trap 'deploy/local/cluster.sh down --dir "$work/cluster" >/dev/null' EXIT
  url="$(cat "$work/cluster/lb")"
  nodes=()
  while read -r n role pid _ _; do nodes+=("$role-$n $pid $work/cluster/node$n/data"); done <"$work/cluster/nodes"
fi
until curl -sf -o /dev/null "$url/v2/"; do sleep 0.1; done

declare -A before
for n in "${nodes[@]}"; do set -- $n; before[$1]="$(kib "$2" VmRSS)"; done
report() {
  sleep 2  # let followers apply and settle
  for n in "${nodes[@]}"; do
    set -- $n
    now="$(kib "$2" VmRSS)"; peak="$(kib "$2" VmHWM)"
    echo "$1: RSS $((before[$1] / 1024)) -> $((now / 1024)) MB (+$(((now - before[$1]) / 1024)) MB, peak $((peak / 1024)) MB);" \
      "log.redb $(mb "$3/raft/log.redb") MB, state $(mb "$3/raft/state") MB"
  done
}
echo "== $count manifests of $bytes bytes, $voters voter(s), server $BERTH_BIN"
"$bin/berth-scale" large-push "$url" "$count" "$bytes"
report
"$bin/berth-scale" large-read "$url" "$count" "$bytes"
report
blobs="$work/single/storage"
[[ "$voters" == 1 ]] || blobs="$work/cluster/blobs"
echo "blob store: $(mb "$blobs") MB"
