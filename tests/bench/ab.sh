#!/usr/bin/env bash
# A/B push figures: another berth binary (e.g. a release build of an earlier commit, made in
# a worktree with its own target dir) against this tree's, alternating on fresh data dirs,
# same client and disk.
#   tests/bench/ab.sh OTHER_BERTH [SIZE_MIB] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/../.."
OTHER=${1:?usage: ab.sh OTHER_BERTH [SIZE_MIB] [ROUNDS]}
SIZE=${2:-1024}
ROUNDS=${3:-3}
cargo build --release -q -p berth-node -p berth-tests --bin berth --bin berth-bench
for _ in $(seq "$ROUNDS"); do
  for bin in "$OTHER" target/release/berth; do
    W=$(mktemp -d /var/tmp/berth-ab.XXXX)
    REGISTRY_HTTP_ADDR=127.0.0.1:5102 REGISTRY_LOG_LEVEL=error "$bin" serve --data-dir "$W" >"$W.log" 2>&1 &
    P=$!
    for _ in $(seq 50); do curl -fso /dev/null http://127.0.0.1:5102/v2/ && break; sleep 0.1; done
    sync
    echo "$bin $(target/release/berth-bench http://127.0.0.1:5102 "$SIZE" 10 2>&1 | grep push_ | awk '{print $1, $2}' | tr '\n' ' ')"
    kill $P; wait $P 2>/dev/null || true
    rm -rf "$W" "$W.log"
  done
done
