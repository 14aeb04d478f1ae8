#!/usr/bin/env bash
# Sites (issue 12), for BENCHMARKS.md: two sites on loopback (deploy/local/sites.sh), release
# build, each site with its own blob store on this machine's disk.
#  1. backfill: BLOBS blobs of 1 KiB (default 10,000) pushed to a primary site alone; then a
#     secondary site of one learner joins; time until it holds them all (verified copies);
#  2. lag: IMAGES images (default 5) of one 100 MiB layer pushed one after another to the
#     primary's balancer; for each, the time from the manifest's 201 until the secondary's
#     store holds every blob, and until a pull at the secondary (manifest and layer, hashed)
#     has completed; copy throughput against the disk's own write speed (dd, fdatasync);
#  3. outage: the primary site SIGKILLed; pulls of every image at the secondary (hashed);
#  4. promotion: `berth geo promote` on the stopped learner, the start, and the first push;
#  5. RSS of the learner.
# Usage: tests/bench/geo.sh [--blobs N] [--images N] [--dir WORKDIR]. BERTH_BIN=path measures another build.
set -euo pipefail
cd "$(dirname "$0")/../.."
blobs=10000; images=5; work=""
while (($#)); do
  case "$1" in
    --blobs) blobs="$2"; shift 2 ;;
    --images) images="$2"; shift 2 ;;
    --dir) work="$2"; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
source tests/bench/lib.sh
export BERTH_BIN
sites="$work/sites"
trap 'deploy/local/sites.sh down --dir "$sites" >/dev/null 2>&1 || true' EXIT
rm -rf "$sites"
mkdir -p "$sites"

echo "== disk: sequential write of 1 GiB with fdatasync"
dd if=/dev/zero of="$work/dd.tmp" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1
rm -f "$work/dd.tmp"

deploy/local/cluster.sh up --dir "$sites/primary" --site primary --voters 1 --frontends 0 >/dev/null
primary="$(cat "$sites/primary/lb")"
export REGISTRY_BERTH_CLUSTERTOKENFILE="$sites/primary/cluster-token"

echo "== backfill: $blobs blobs of 1 KiB pushed to the primary alone"
python3 - "$primary" "$blobs" <<'PY'
import concurrent.futures, hashlib, os, sys, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
def push(i):
    body = i.to_bytes(8, "little") + os.urandom(1016)
    d = "sha256:" + hashlib.sha256(body).hexdigest()
    r = urllib.request.urlopen(urllib.request.Request(f"{url}/v2/fill/r{i % 100}/blobs/uploads/?digest={d}", data=body, method="POST"))
    assert r.status == 201
with concurrent.futures.ThreadPoolExecutor(16) as ex:
    list(ex.map(push, range(n)))
PY
start=$(date +%s.%N)
deploy/local/cluster.sh up --dir "$sites/secondary" --site secondary --follow "$sites/primary" --voters 1 --frontends 0 >/dev/null
grpc1="$(awk '$1 == 1 { print $5 }' "$sites/primary/nodes")"
while :; do
  line="$("$BERTH_BIN" geo status --json --node "$grpc1" | python3 -c 'import json,sys; s=[x for x in json.load(sys.stdin) if x["site"]=="secondary"]; x=s[0] if s else {"held": 0, "missing": 0, "backfilled": False}; print(x["held"], x["missing"], x["backfilled"])')"
  read -r held missing done <<<"$line"
  [[ "$done" == True && "$missing" == 0 ]] && break
  sleep 0.2
done
end=$(date +%s.%N)
echo "secondary joined and holds $held pieces of content after $(echo "$end - $start" | bc) s (learner start, catch-up and backfill)"

secondary="$(cat "$sites/secondary/lb")"
echo "== lag: $images images of one 100 MiB layer, pushed at the primary, pulled at the secondary"
python3 - "$primary" "$secondary" "$images" "$sites/secondary/blobs" <<'PY'
import hashlib, json, os, sys, time, urllib.request
primary, secondary, n, store = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def post(url, body):
    r = urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"))
    assert r.status == 201, r.status
def held(d):
    h = d.split(":")[1]
    return os.path.exists(f"{store}/blobs/sha256/{h[:2]}/{h}")
copied, pulled, rates = [], [], []
for i in range(n):
    layer = os.urandom(100 << 20)
    config = json.dumps({"i": i, "t": time.time()}).encode()
    ld, cd = ("sha256:" + hashlib.sha256(b).hexdigest() for b in (layer, config))
    post(f"{primary}/v2/big/app/blobs/uploads/?digest={ld}", layer)
    post(f"{primary}/v2/big/app/blobs/uploads/?digest={cd}", config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}]}).encode()
    md = "sha256:" + hashlib.sha256(manifest).hexdigest()
    r = urllib.request.urlopen(urllib.request.Request(f"{primary}/v2/big/app/manifests/v{i}", data=manifest, method="PUT",
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"}))
    assert r.status == 201
    t0 = time.time()
    while not all(held(d) for d in (ld, cd, md)):
        time.sleep(0.01)
    t1 = time.time()
    got = urllib.request.urlopen(urllib.request.Request(f"{secondary}/v2/big/app/manifests/v{i}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})).read()
    assert got == manifest
    h = hashlib.sha256()
    with urllib.request.urlopen(f"{secondary}/v2/big/app/blobs/{ld}") as r:
        while chunk := r.read(1 << 20):
            h.update(chunk)
    assert "sha256:" + h.hexdigest() == ld
    t2 = time.time()
    copied.append(t1 - t0); pulled.append(t2 - t0)
    print(f"image {i}: held at the secondary {t1 - t0:.3f} s after the 201, pulled and verified there at {t2 - t0:.3f} s")
copied.sort(); pulled.sort()
mid = lambda v: v[len(v) // 2]
print(f"held at the secondary: p50 {mid(copied):.3f} s, max {copied[-1]:.3f} s; verified pull done: p50 {mid(pulled):.3f} s, max {pulled[-1]:.3f} s")
print(f"copy throughput (100 MiB over the p50 copy time): {100 / mid(copied):.0f} MiB/s")
PY

echo "== outage: the primary site killed; every image pulled at the secondary"
deploy/local/sites.sh kill-site --dir "$sites" primary >/dev/null
python3 - "$secondary" "$images" <<'PY'
import hashlib, json, sys, time, urllib.request
url, n = sys.argv[1], int(sys.argv[2])
t0 = time.time(); total = 0; lat = []
for i in range(n):
    a = time.time()
    m = json.loads(urllib.request.urlopen(urllib.request.Request(f"{url}/v2/big/app/manifests/v{i}",
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})).read())
    lat.append(time.time() - a)
    for d in [m["config"]["digest"]] + [l["digest"] for l in m["layers"]]:
        h = hashlib.sha256()
        with urllib.request.urlopen(f"{url}/v2/big/app/blobs/{d}") as r:
            while chunk := r.read(1 << 20):
                h.update(chunk); total += len(chunk)
        assert "sha256:" + h.hexdigest() == d
dt = time.time() - t0
lat.sort()
print(f"{n} images ({total >> 20} MiB) pulled and verified at the secondary in {dt:.2f} s ({(total >> 20) / dt:.0f} MiB/s); manifest GET p50 {lat[len(lat)//2]*1000:.1f} ms, max {lat[-1]*1000:.1f} ms")
PY

echo "== RSS of the learner"
lpid="$(awk '$1 == 1 { print $3 }' "$sites/secondary/nodes")"
grep -E 'VmRSS|VmHWM' "/proc/$lpid/status"

echo "== promotion"
deploy/local/cluster.sh kill --dir "$sites/secondary" 1 >/dev/null
start=$(date +%s.%N)
(cd "$sites/secondary/node1" && "$BERTH_BIN" geo promote --config config.yml --data-dir data) | head -2
sed -i 's/^  role: learner/  role: voter/' "$sites/secondary/node1/config.yml"
mid=$(date +%s.%N)
deploy/local/cluster.sh start --dir "$sites/secondary" 1 >/dev/null
body="promoted $(date +%s%N)"
d="sha256:$(printf '%s' "$body" | sha256sum | cut -d' ' -f1)"
until [[ "$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary "$body" "$secondary/v2/after/promotion/blobs/uploads/?digest=$d")" == 201 ]]; do sleep 0.05; done
end=$(date +%s.%N)
echo "berth geo promote took $(echo "$mid - $start" | bc) s; start to the first acknowledged push $(echo "$end - $mid" | bc) s"
