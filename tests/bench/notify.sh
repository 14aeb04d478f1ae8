#!/usr/bin/env bash
# Notifications (issue 14), for BENCHMARKS.md: one release node with one webhook endpoint (a
# Python receiver on loopback that logs each manifest event's arrival time).
#  1. throughput: COUNT manifest pushes (default 10,000) at concurrency 8; how fast events
#     arrive, and how long after the last push's 201 the last event arrives;
#  2. lag: 200 manifest pushes one after another (curl); for each, the time from its 201 to
#     its event's arrival (p50, p99, max).
# Usage: tests/bench/notify.sh [--count N] [--dir WORKDIR]. BERTH_BIN=path measures another build.
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
pid=""; rpid=""
trap '[[ -n "$pid" ]] && kill $pid 2>/dev/null; [[ -n "$rpid" ]] && kill $rpid 2>/dev/null || true' EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
: >"$work/arrivals"
python3 - "$port" "$work/arrivals" <<'PY' &
import http.server, json, sys, time
out = open(sys.argv[2], "a", buffering=1)
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        events = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["events"]
        now = time.time()
        for e in events:
            if e["action"] == "push" and "tag" in e["target"]:
                out.write(f'{e["target"]["tag"]} {now:.6f}\n')
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
rpid=$!
cat >"$work/config.yml" <<YML
version: 0.1
notifications:
  endpoints:
    - name: bench
      url: http://127.0.0.1:$port/events
      timeout: 2s
YML
: >"$work/node.log"
REGISTRY_HTTP_ADDR=127.0.0.1:0 "$BERTH_BIN" serve --config "$work/config.yml" --data-dir "$work/data" >>"$work/node.log" 2>&1 &
pid=$!
until url="$(sed -n 's/^berth: listening on //p' "$work/node.log")" && [[ -n "$url" ]]; do sleep 0.05; done
until curl -sf -o /dev/null "$url/v2/"; do sleep 0.1; done
until grep -q "notification endpoints registered" "$work/node.log"; do sleep 0.1; done
arrived() { wc -l <"$work/arrivals"; }

echo "== $count manifest pushes at concurrency 8, server $BERTH_BIN"
t0=$(date +%s.%N)
"$bin/berth-put-latency" "$url" 8 "$count"
t1=$(date +%s.%N)
until (( $(arrived) >= count )); do sleep 0.05; done
t2=$(date +%s.%N)
echo "events: $(arrived) arrived; $(echo "scale=0; $count / ($t2 - $t0)" | bc) events/s end to end; the last $(echo "scale=3; $t2 - $t1" | bc) s after the last 201"

echo "== lag of 200 pushes one after another"
tag="$(curl -s "$url/v2/bench/put/tags/list?n=1" | sed 's/.*"tags":\["\([^"]*\)".*/\1/')"
curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' "$url/v2/bench/put/manifests/$tag" -o "$work/manifest.json"
: >"$work/acks"
for i in $(seq 1 200); do
  curl -sf -o /dev/null -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary @"$work/manifest.json" "$url/v2/bench/put/manifests/lag-$i"
  echo "lag-$i $(date +%s.%N)" >>"$work/acks"
done
until (( $(grep -c '^lag-' "$work/arrivals") >= 200 )); do sleep 0.05; done
join <(sort "$work/acks") <(grep '^lag-' "$work/arrivals" | sort -u -k1,1) | awk '{printf "%.3f\n", ($3 - $2) * 1000}' | sort -n >"$work/lags"
awk '{a[NR]=$1} END {printf "lag_ms p50 %.1f p99 %.1f max %.1f (n=%d)\n", a[int(NR*0.5)], a[int(NR*0.99)], a[NR], NR}' "$work/lags"
echo "RSS $(( $(awk '/VmRSS/ {print $2}' /proc/$pid/status) / 1024 )) MB"
