# Shared by the benchmark scripts (sourced after their argument loop, from the workspace root):
# makes the work directory (a temporary one unless --dir gave one), builds the release binaries
# and sets $bin (where berth-put-latency, berth-scale, ... are) and $BERTH_BIN (the server,
# unless the caller names another build).
work="${work:-$(mktemp -d)}"
mkdir -p "$work"
cargo build --release -q -p berth-node -p berth-tests
bin="$PWD/target/release"
BERTH_BIN="${BERTH_BIN:-$bin/berth}"
