#!/usr/bin/env bash
# Builds Berth's container image here, pulling nothing: FROM scratch with the berth binary,
# the shared libraries it links, CA certificates (for S3 and GCS over TLS), and a passwd
# entry for the unprivileged user it runs as (65532). The health check is `berth probe` on
# the loopback debug listener's /debug/ready.
#   deploy/image/build.sh [BINARY] [TAG]
#   default: target/release/berth (built if missing), berth:latest
# Run it:
#   docker run -d -p 5000:5000 -v berth-data:/var/lib/berth berth:latest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
bin="${1:-$root/target/release/berth}"
tag="${2:-berth:latest}"
if [[ ! -x "$bin" ]]; then
  (cd "$root" && cargo build --release -p berth-node --bin berth)
fi
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
fs="$ctx/rootfs"
# /var/lib/berth/storage is where blobs go by default; made here so that a volume mounted
# there (the blob store the nodes of a compose file share) starts owned by the berth user.
mkdir -p "$fs/usr/local/bin" "$fs/etc/ssl/certs" "$fs/var/lib/berth/storage" "$fs/tmp"
# Debug symbols stay out of the image.
objcopy --strip-debug "$bin" "$fs/usr/local/bin/berth"
# The dynamic loader and every library the binary links, at the paths it expects.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
  mkdir -p "$fs$(dirname "$lib")"
  cp -L "$lib" "$fs$lib"
done
if [[ -f /etc/ssl/certs/ca-certificates.crt ]]; then
  cp /etc/ssl/certs/ca-certificates.crt "$fs/etc/ssl/certs/"
fi
echo "berth:x:65532:65532:berth:/var/lib/berth:/nonexistent" >"$fs/etc/passwd"
echo "berth:x:65532:" >"$fs/etc/group"
# One archive, owners set in it: root for the system, the berth user for its data and /tmp.
tar --numeric-owner --owner=0 --group=0 --exclude=./var/lib/berth --exclude=./tmp -C "$fs" -cf "$ctx/rootfs.tar" .
tar --numeric-owner --owner=65532 --group=65532 -C "$fs" -rf "$ctx/rootfs.tar" ./var/lib/berth ./tmp
rm -rf "$fs"
cp "$here/Dockerfile" "$ctx/"
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
