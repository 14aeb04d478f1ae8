#!/usr/bin/env bash
# A local Berth cluster on loopback: separate `berth` processes (voters and frontends) behind
# an nginx round-robin load balancer, for trying Berth out and for tests.
#
#   cluster.sh up     --dir DIR [--voters 3] [--frontends 2]   # after down: the same cluster again
#                     [--site NAME]            # the nodes name their site (berth.geo.site)
#                     [--follow PRIMARY_DIR]   # a secondary site: --voters learners (ids 101..)
#                                              # that join the cluster in PRIMARY_DIR
#   cluster.sh status --dir DIR          # "leader ID", then each node's state
#   cluster.sh kill   --dir DIR ID       # SIGKILL one node
#   cluster.sh start  --dir DIR ID       # restart it on its data and ports
#   cluster.sh down   --dir DIR          # stop everything (data stays in DIR)
#
# DIR/nodes has one line per node: `ID ROLE PID HTTP_ADDR GRPC_ADDR` (a frontend has no gRPC
# listener: `-`). Voters are ids 1..V (their Raft ids); frontends are numbered after them.
# DIR/lb holds the load balancer's URL. Every node shares the blob store DIR/blobs (one site;
# deploy/local/sites.sh runs two).
# The berth binary is $BERTH_BIN, else target/{release,debug}/berth, else `berth` on PATH.
set -euo pipefail

die() { echo "cluster.sh: $*" >&2; exit 1; }

root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="${BERTH_BIN:-}"
if [[ -z "$bin" ]]; then
  for b in "$root/target/release/berth" "$root/target/debug/berth"; do
    [[ -x "$b" ]] && { bin="$b"; break; }
  done
fi
bin="${bin:-$(command -v berth || true)}"
[[ -x "$bin" ]] || die "no berth binary: build it (cargo build --release -p berth-node) or set BERTH_BIN"
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

cmd="${1:-}"; shift || true
dir=""; voters=3; frontends=2; id=""; site=""; follow=""
while (($#)); do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --site) site="$2"; shift 2 ;;
    --follow) follow="$(cd "$2" && pwd)"; shift 2 ;;
    --voters) voters="$2"; shift 2 ;;
    --frontends) frontends="$2"; shift 2 ;;
    -*) die "unknown option $1" ;;
    *) id="$1"; shift ;;
  esac
done
[[ -n "$dir" ]] || die "usage: cluster.sh up|status|kill|start|down --dir DIR [...]"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
# Every gRPC call between nodes, and from `berth cluster`, carries this cluster's token.
token="$dir/cluster-token"
# A secondary site is a member of the primary's cluster: the same token (copied, so that later
# commands on this directory find it).
if [[ -n "$follow" && ! -f "$token" ]]; then
  (umask 077 && cp "$follow/cluster-token" "$token")
fi
export REGISTRY_BERTH_CLUSTERTOKENFILE="$token"

py="$(command -v /usr/bin/python3 || command -v python3)"
# A free loopback port from below the kernel's ephemeral range: a port from that range can be
# taken by any outgoing connection between this pick and the node's bind (a CI run lost a
# cluster to that while another cluster was busy on the same machine).
# free_port VAR: sets VAR to a port not picked before by this run.
picked=" "
free_port() {
  local _picked_port  # not a name a caller passes
  while :; do
    _picked_port="$(pick_port)"
    [[ "$picked" == *" $_picked_port "* ]] || break
  done
  picked+="$_picked_port "
  printf -v "$1" '%s' "$_picked_port"
}
pick_port() {
  "$py" - <<'PY'
import random, socket
try:
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
except Exception:
    low = 32768
for _ in range(1000 if low > 11000 else 0):
    port = random.randrange(10000, low)
    try:
        socket.socket().bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
else:
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
}

# field ID N: the Nth field of node ID's line in DIR/nodes.
field() { awk -v id="$1" -v n="$2" '$1 == id { print $n }' "$dir/nodes"; }

# A process is alive if it exists and is not a zombie waiting to be reaped.
alive() {
  [[ -n "$1" && "$1" != "-" ]] && kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [[ "${stat:0:1}" != Z ]]
}

# Starts node ID from its config; prints its pid.
launch() {
  local n="$1"
  (cd "$dir/node$n" && exec "$bin" serve --config config.yml --data-dir data >>log 2>&1) &
  echo $!
}

# Waits until node ID's HTTP listener answers.
wait_http() {
  local addr="$1" log="$2" mode="${3:-ready}"
  for _ in $(seq 1 300); do
    # Ready: 200, or 401 when auth is configured (REGISTRY_AUTH_* in the environment reach
    # every node). A voter not yet joined answers 503 until it is; `listening` takes that.
    case "$(curl -so /dev/null -w '%{http_code}' "http://$addr/v2/")" in
      200|401) return 0 ;;
      503) [[ "$mode" == listening ]] && return 0 ;;
    esac
    sleep 0.1
  done
  tail -20 "$log" >&2
  die "node at $addr did not start"
}

write_config() {
  local n="$1" role="$2" http="$3" grpc="$4" peers="$5"
  mkdir -p "$dir/node$n"
  {
    echo "version: 0.1"
    echo "http:"
    echo "  addr: $http"
    echo "storage:"
    echo "  filesystem:"
    echo "    rootdirectory: $dir/blobs"
    echo "berth:"
    echo "  role: $role"
    echo "  clustertokenfile: $token"
    # nginx below connects from loopback and names the client in X-Forwarded-For, so that
    # login limits and the audit log see each client, not the balancer.
    echo "  trustedproxies: 127.0.0.1"
    if [[ "$role" == voter ]]; then
      echo "  nodeid: $n"
      echo "  grpcaddr: $grpc"
      [[ "$n" == 1 ]] && echo "  bootstrap: true" || echo "  bootstrap: false"
    elif [[ "$role" == learner ]]; then
      echo "  nodeid: $((100 + n))"
      echo "  grpcaddr: $grpc"
      echo "  join: $peers"
    else
      echo "  peers: $peers"
    fi
    if [[ -n "$site" ]]; then
      echo "  geo:"
      echo "    site: $site"
    fi
  } >"$dir/node$n/config.yml"
}

write_nginx() {
  local port="$1"; shift
  mkdir -p "$dir/nginx"
  {
    echo "worker_processes 1;"
    echo "daemon off;"
    echo "pid $dir/nginx/nginx.pid;"
    echo "error_log $dir/nginx/error.log warn;"
    echo "events { worker_connections 1024; }"
    echo "http {"
    echo "  access_log off;"
    echo "  client_body_temp_path $dir/nginx/body;"
    echo "  proxy_temp_path $dir/nginx/proxy;"
    echo "  fastcgi_temp_path $dir/nginx/fastcgi;"
    echo "  uwsgi_temp_path $dir/nginx/uwsgi;"
    echo "  scgi_temp_path $dir/nginx/scgi;"
    echo "  upstream berth {"
    # Plain round robin, no affinity; a node that refuses connections is skipped for 2 s.
    for a in "$@"; do echo "    server $a max_fails=1 fail_timeout=2s;"; done
    echo "    keepalive 64;"
    echo "  }"
    echo "  server {"
    echo "    listen 127.0.0.1:$port;"
    echo "    location / {"
    echo "      proxy_pass http://berth;"
    # The snippet documented for real deployments, as it is.
    echo "      include $root/deploy/nginx/berth-proxy.conf;"
    echo "    }"
    echo "  }"
    echo "}"
  } >"$dir/nginx/nginx.conf"
}

# The cluster brought down in DIR before: the same nodes on their data and ports, and the
# same load balancer.
restart() {
  : >"$dir/nodes.tmp"
  local n role pid http grpc started=()
  while read -r n role pid http grpc; do
    pid="$(launch "$n")"
    echo "$n $role $pid $http $grpc" >>"$dir/nodes.tmp"
    started+=("$n $http")
  done <"$dir/nodes.down"
  for x in "${started[@]}"; do
    wait_http "${x#* }" "$dir/node${x%% *}/log"
  done
  mv "$dir/nodes.tmp" "$dir/nodes"
  rm -f "$dir/nodes.down"
  (exec nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" >>"$dir/nginx/error.log" 2>&1) &
  wait_http "$(sed 's|^http://||' "$dir/lb")" "$dir/nginx/error.log"
  echo "cluster up again: ${#started[@]} nodes on their data; load balancer at $(cat "$dir/lb")"
}

up() {
  [[ -f "$dir/nodes" ]] && die "$dir already holds a cluster (run down, or use another --dir)"
  if [[ -f "$dir/nodes.down" ]]; then
    restart
    return
  fi
  command -v nginx >/dev/null || die "nginx is required (apt-get install nginx-light)"
  ((voters >= 1)) || die "--voters must be at least 1"
  : >"$dir/nodes.tmp"
  if [[ -n "$follow" ]]; then
    [[ -f "$follow/nodes" ]] || die "--follow $follow: no cluster runs there"
    up_learners
    return
  fi
  [[ -f "$token" ]] || (umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' >"$token")
  local grpcs=() https=()
  for n in $(seq 1 "$voters"); do
    local hp gp
    free_port hp; free_port gp
    local h="127.0.0.1:$hp" g="127.0.0.1:$gp"
    write_config "$n" voter "$h" "$g" ""
    grpcs+=("$g"); https+=("$h")
  done
  local peers
  peers="$(IFS=,; echo "${grpcs[*]}")"
  for n in $(seq 1 "$voters"); do
    local pid
    pid="$(launch "$n")"
    wait_http "${https[n-1]}" "$dir/node$n/log" listening
    echo "$n voter $pid ${https[n-1]} ${grpcs[n-1]}" >>"$dir/nodes.tmp"
  done
  for n in $(seq 2 "$voters"); do
    "$bin" cluster add-learner --node "${grpcs[0]}" --id "$n" --addr "${grpcs[n-1]}" >/dev/null
  done
  if ((voters > 1)); then
    "$bin" cluster change-membership --node "${grpcs[0]}" --voters "$(seq -s, 1 "$voters")" >/dev/null
  fi
  for n in $(seq 1 "$voters"); do
    wait_http "${https[n-1]}" "$dir/node$n/log"
  done
  frontends_and_balancer "$peers" "${https[@]}"
  echo "cluster up: $voters voters, $frontends frontends; load balancer at $(cat "$dir/lb")"
}

# Starts the frontends (node ids after the $voters others; metadata to the gRPC addresses in
# PEERS), then nginx in front of HTTP_ADDR... and them; writes DIR/nodes and DIR/lb.
frontends_and_balancer() {
  local peers="$1"; shift
  local https=("$@")
  for f in $(seq 1 "$frontends"); do
    local hp
    free_port hp
    local n=$((voters + f)) h="127.0.0.1:$hp" pid
    write_config "$n" frontend "$h" "-" "$peers"
    pid="$(launch "$n")"
    wait_http "$h" "$dir/node$n/log"
    echo "$n frontend $pid $h -" >>"$dir/nodes.tmp"
    https+=("$h")
  done
  mv "$dir/nodes.tmp" "$dir/nodes"
  local port
  free_port port
  write_nginx "$port" "${https[@]}"
  (exec nginx -c "$dir/nginx/nginx.conf" -p "$dir/nginx" >>"$dir/nginx/error.log" 2>&1) &
  echo "http://127.0.0.1:$port" >"$dir/lb"
  wait_http "127.0.0.1:$port" "$dir/nginx/error.log"
}

# A secondary site: learners that join the voters of the cluster in $follow, and frontends
# that send metadata to them.
up_learners() {
  local primary
  primary="$(awk '$2 == "voter" { printf "%s%s", sep, $5; sep = "," }' "$follow/nodes")"
  local grpcs=() https=()
  for n in $(seq 1 "$voters"); do
    local hp gp pid
    free_port hp; free_port gp
    local h="127.0.0.1:$hp" g="127.0.0.1:$gp"
    write_config "$n" learner "$h" "$g" "$primary"
    pid="$(launch "$n")"
    echo "$n learner $pid $h $g" >>"$dir/nodes.tmp"
    grpcs+=("$g"); https+=("$h")
  done
  for n in $(seq 1 "$voters"); do
    wait_http "${https[n-1]}" "$dir/node$n/log"
  done
  local peers
  peers="$(IFS=,; echo "${grpcs[*]}")"
  frontends_and_balancer "$peers" "${https[@]}"
  echo "site ${site:-secondary} up: $voters learners following $follow, $frontends frontends; load balancer at $(cat "$dir/lb")"
}

status() {
  [[ -f "$dir/nodes" ]] || die "no cluster in $dir"
  # Ask the voters in turn; trust a view in which the named leader itself says it leads (a
  # node that has just restarted may still name the leader it knew before).
  local shown="" out l
  while read -r n role pid http grpc; do
    [[ "$role" == voter || "$role" == learner ]] && alive "$pid" || continue
    out="$("$bin" cluster status --node "$grpc" 2>/dev/null)" || continue
    l="$(awk '/^leader /{print $2}' <<<"$out")"
    if grep -q "^node $l .*state=Leader" <<<"$out"; then
      echo "$out"; shown=1; break
    fi
  done <"$dir/nodes"
  [[ -n "$shown" ]] || echo "leader 0"
  while read -r n role pid http grpc; do
    local state=down
    alive "$pid" && state=up
    echo "$role $n pid=$pid http=$http grpc=$grpc $state"
  done <"$dir/nodes"
}

kill_node() {
  [[ -n "$id" ]] || die "kill: which node id?"
  local pid
  pid="$(field "$id" 3)"
  [[ -n "$pid" ]] || die "no node $id"
  alive "$pid" && kill -9 "$pid"
  while alive "$pid"; do sleep 0.05; done
  echo "node $id killed"
}

start_node() {
  [[ -n "$id" ]] || die "start: which node id?"
  local pid http
  pid="$(field "$id" 3)"; http="$(field "$id" 4)"
  [[ -n "$http" ]] || die "no node $id"
  alive "$pid" && die "node $id is running (pid $pid)"
  pid="$(launch "$id")"
  awk -v id="$id" -v pid="$pid" '$1 == id { $3 = pid } { print }' "$dir/nodes" >"$dir/nodes.tmp" && mv "$dir/nodes.tmp" "$dir/nodes"
  wait_http "$http" "$dir/node$id/log"
  echo "node $id started (pid $pid)"
}

down() {
  if [[ -f "$dir/nginx/nginx.pid" ]]; then
    kill "$(cat "$dir/nginx/nginx.pid")" 2>/dev/null || true
  fi
  if [[ -f "$dir/nodes" ]]; then
    while read -r n role pid http grpc; do
      alive "$pid" && kill "$pid" 2>/dev/null || true
    done <"$dir/nodes"
    while read -r n role pid http grpc; do
      for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -9 "$pid" 2>/dev/null || true
    done <"$dir/nodes"
    mv "$dir/nodes" "$dir/nodes.down"
  fi
  echo "cluster down (data kept in $dir)"
}

case "$cmd" in
  up) up ;;
  status) status ;;
  kill) kill_node ;;
  start) start_node ;;
  down) down ;;
  bin) echo "$bin" ;;
  *) die "usage: cluster.sh up|status|kill|start|down --dir DIR [...]" ;;
esac
