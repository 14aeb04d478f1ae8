#!/usr/bin/env bash
# Two Berth sites on loopback, each with its own blob store and load balancer: a primary site
# (voters) and a secondary site (learners that follow the primary's log, copy its content and
# serve pulls from their own copy). Built on cluster.sh, one cluster.sh directory per site.
#
#   sites.sh up         --dir DIR [--voters 3] [--learners 2] [--frontends 0]
#   sites.sh status     --dir DIR                 # each site's nodes, then `berth geo status`
#   sites.sh kill-site  --dir DIR primary|secondary   # SIGKILL every node of the site
#   sites.sh start-site --dir DIR primary|secondary   # start them again on their data
#   sites.sh down       --dir DIR                 # stop everything (data stays in DIR)
#
# DIR/primary/lb and DIR/secondary/lb hold the load balancers' URLs; DIR/<site>/blobs is each
# site's blob store. The berth binary is found as cluster.sh finds it ($BERTH_BIN, ...).
set -euo pipefail

die() { echo "sites.sh: $*" >&2; exit 1; }
here="$(cd "$(dirname "$0")" && pwd)"
cluster="$here/cluster.sh"

cmd="${1:-}"; shift || true
dir=""; voters=3; learners=2; frontends=0; which=""
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --voters) voters="$2"; shift 2 ;;
    --learners) learners="$2"; shift 2 ;;
    --frontends) frontends="$2"; shift 2 ;;
    -*) die "unknown option $1" ;;
    *) which="$1"; shift ;;
  esac
done
[[ -n "$dir" ]] || die "usage: sites.sh up|status|kill-site|start-site|down --dir DIR [...]"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
bin="$("$cluster" bin --dir "$dir")"

site_dir() {
  case "$1" in
    primary|secondary) echo "$dir/$1" ;;
    *) die "which site? primary or secondary" ;;
  esac
}

# The ids of the site's nodes that cluster.sh started, and whether each runs.
site_ids() { awk '{ print $1 }' "$1/nodes"; }

case "$cmd" in
  up)
    if [[ -f "$dir/primary/nodes.down" || -f "$dir/secondary/nodes.down" ]]; then
      "$cluster" up --dir "$dir/primary"
      "$cluster" up --dir "$dir/secondary"
    else
      "$cluster" up --dir "$dir/primary" --site primary --voters "$voters" --frontends "$frontends"
      "$cluster" up --dir "$dir/secondary" --site secondary --follow "$dir/primary" --voters "$learners" --frontends "$frontends"
    fi
    echo "primary at $(cat "$dir/primary/lb"), secondary at $(cat "$dir/secondary/lb")"
    ;;
  status)
    for s in primary secondary; do
      echo "== $s"
      "$cluster" status --dir "$dir/$s" | grep -v '^leader\|^node ' || true
    done
    for s in primary secondary; do
      while read -r n role pid http grpc; do
        [[ "$role" == frontend ]] && continue
        kill -0 "$pid" 2>/dev/null || continue
        echo "== sites, as node $n of the $s site sees them"
        REGISTRY_BERTH_CLUSTERTOKENFILE="$dir/primary/cluster-token" "$bin" geo status --node "$grpc" && exit 0
      done <"$dir/$s/nodes"
    done
    echo "no node answers"
    ;;
  kill-site)
    d="$(site_dir "$which")"
    for n in $(site_ids "$d"); do "$cluster" kill --dir "$d" "$n"; done
    echo "site $which killed"
    ;;
  start-site)
    d="$(site_dir "$which")"
    for n in $(site_ids "$d"); do "$cluster" start --dir "$d" "$n" || true; done
    echo "site $which started"
    ;;
  down)
    [[ -d "$dir/secondary" ]] && "$cluster" down --dir "$dir/secondary"
    [[ -d "$dir/primary" ]] && "$cluster" down --dir "$dir/primary"
    ;;
  *) die "usage: sites.sh up|status|kill-site|start-site|down --dir DIR [...]" ;;
esac
