#!/usr/bin/env bash
# Builds the compose file's load balancer image here, pulling nothing: FROM scratch with this
# machine's nginx (Debian's nginx-light or nginx), the libraries it links, and
# deploy/compose/nginx/nginx.conf, running as the unprivileged user 65532 on port 8080.
#   deploy/compose/nginx/build.sh [TAG]      # default: berth-nginx:latest
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
tag="${1:-berth-nginx:latest}"
nginx="$(command -v nginx || true)"
[[ -x "$nginx" ]] || { echo "nginx/build.sh: nginx is needed on this machine (apt-get install nginx-light)" >&2; exit 1; }
ctx="$(mktemp -d)"
trap 'rm -rf "$ctx"' EXIT
fs="$ctx/rootfs"
mkdir -p "$fs/usr/sbin" "$fs/etc/nginx" "$fs/tmp" "$fs/var/log/nginx"
cp "$nginx" "$fs/usr/sbin/nginx"
ldd "$nginx" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
  mkdir -p "$fs$(dirname "$lib")"
  cp -L "$lib" "$fs$lib"
done
cp "$here/nginx.conf" "$fs/etc/nginx/nginx.conf"
# The snippet every Berth deployment uses, as it is.
cp "$root/deploy/nginx/berth-proxy.conf" "$fs/etc/nginx/berth-proxy.conf"
echo "nginx:x:65532:65532:nginx:/nonexistent:/nonexistent" >"$fs/etc/passwd"
echo "nginx:x:65532:" >"$fs/etc/group"
tar --numeric-owner --owner=0 --group=0 --exclude=./tmp -C "$fs" -cf "$ctx/rootfs.tar" .
tar --numeric-owner --owner=65532 --group=65532 -C "$fs" -rf "$ctx/rootfs.tar" ./tmp
rm -rf "$fs"
cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
ADD rootfs.tar /
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"]
DOCKERFILE
docker build -q -t "$tag" "$ctx" >/dev/null
echo "$tag"
