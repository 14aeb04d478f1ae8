#!/usr/bin/env bash
# Makes a release tarball of Berth: bin/berth (stripped of debug information), the README,
# OPERATIONS.md, and the files an operator installs beside it (the systemd unit, the nginx
# snippet, the Grafana dashboard).
#   deploy/release/tarball.sh [BINARY] [OUT_DIR]
#   default: target/release/berth (built if missing), the current directory
# Prints the tarball's path: berth-VERSION-ARCH-linux.tar.gz, which unpacks into
# berth-VERSION/. Install: tar -xzf berth-*.tar.gz && sudo install berth-*/bin/berth /usr/local/bin/
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${1:-$root/target/release/berth}"
out="$(cd "${2:-.}" && pwd)"
if [[ ! -x "$bin" ]]; then
  (cd "$root" && cargo build --release -p berth-node --bin berth)
fi
version="$("$bin" --version | awk '{print $2}')"
name="berth-$version"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/$name/bin" "$stage/$name/deploy"
objcopy --strip-debug "$bin" "$stage/$name/bin/berth"
cp "$root/README.md" "$root/OPERATIONS.md" "$stage/$name/"
cp -r "$root/deploy/systemd" "$root/deploy/nginx" "$root/deploy/grafana" "$stage/$name/deploy/"
tarball="$out/$name-$(uname -m)-linux.tar.gz"
tar --owner=0 --group=0 -C "$stage" -czf "$tarball" "$name"
echo "$tarball"
