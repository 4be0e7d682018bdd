#!/usr/bin/env bash
# bench/proxy.sh - Portico's data plane side by side with nginx and HAProxy, following
# ../shared/bench/README.md: the proxies run with ONE worker pinned to CPU 0; the load
# generator and the two backends (127.0.0.1:18001/18002, round-robin, keep-alive) on CPU 1;
# TLS session resumption off everywhere; the same test CA and leaf certificate.
#
# usage: bench/proxy.sh [-r RUNS] [-d SECS] [-T "TESTS"] [-w WORKERS] [-k] [-i] [-s]
#   RUNS, SECS, TESTS are passed to proxy-bench.sh (defaults 3, 10, "h1c64 h1c256 tls64 tlsnew h2 h3").
#   WORKERS: Portico's Tokio worker threads (default 1, as the method says; 2 may be reported beside).
#   -k: keep the anchors (nginx, HAProxy, backends) running afterwards.
#   -i: only count Portico's user-space instructions per proxied HTTP/1.1 keep-alive request
#       (valgrind callgrind, h2load --h1 -c 64, 2,000 warm-up requests then N=${IREQS:-6000}
#       counted): repeatable to ~0.1 % on a busy machine, unlike requests/s. PORTICO_BIN=path
#       measures another build of portico-proxy-standalone (e.g. an older commit's).
#   -s: after the matrix, split each proxy's CPU per request into user space and kernel
#       (/proc/PID/stat over one SECS-long run per test, nginx/HAProxy/Portico in turn): the
#       kernel share is what no proxy can save with the same four syscalls per request, so it
#       bounds the ratios reachable on one core.
#   QUIET (env): proxy-bench.sh waits before each run until the machine is below QUIET % of one
#   core (default 20); raise it on a shared, busy machine and quote the "other" column.
# Also measures Portico's peak RSS with a 1,000-route table (idle and after load).
# Output: the proxy-bench table on stdout and in $OUT/table.md; RSS lines in $OUT/rss.txt.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$ROOT/../shared/bench}
ANCHORS_DIR=${ANCHORS_DIR:-/tmp/anchors}
export ANCHORS_DIR
RUNS=3; DUR=10; TESTS="h1c64 h1c256 tls64 tlsnew h2 h3"; WORKERS=1; KEEP=0; INSTR=0; SPLIT=0
while getopts "r:d:T:w:kish" o; do
  case $o in
    r) RUNS=$OPTARG ;; d) DUR=$OPTARG ;; T) TESTS=$OPTARG ;; w) WORKERS=$OPTARG ;; k) KEEP=1 ;;
    i) INSTR=1 ;;
    s) SPLIT=1 ;;
    *) sed -n '2,22p' "$0"; exit 2 ;;
  esac
done
OUT=${OUT:-/tmp/portico-proxy-bench.$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
P=$ANCHORS_DIR/portico
mkdir -p "$P"
C=$ANCHORS_DIR/certs
log() { printf '[bench/proxy] %s\n' "$*" >&2; }

command -v nginx >/dev/null && command -v haproxy >/dev/null && command -v wrk >/dev/null \
  || bash "$SHARED/anchors-setup.sh" install
WITH_ENVOY=${WITH_ENVOY:-0} WITH_TRAEFIK=${WITH_TRAEFIK:-0} bash "$SHARED/anchors-setup.sh" up

log "building portico-proxy-standalone (release)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/portico-target}
(cd "$ROOT" && cargo build -q --release -p portico-proxy --features standalone --bin portico-proxy-standalone)
BIN=${PORTICO_BIN:-$CARGO_TARGET_DIR/release/portico-proxy-standalone} # PORTICO_BIN: compare another build

# The same two backends behind one Service; one catch-all Ingress (wrk sends Host: 127.0.0.1:PORT).
service_yaml() {
  cat <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: be, namespace: default}
spec:
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: be-a, namespace: default, labels: {kubernetes.io/service-name: be}}
addressType: IPv4
ports: [{name: http, port: 18001}]
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: be-b, namespace: default, labels: {kubernetes.io/service-name: be}}
addressType: IPv4
ports: [{name: http, port: 18002}]
endpoints: [{addresses: ["127.0.0.1"], conditions: {ready: true}}]
YAML
}
ingress_yaml() { # name host(or empty)
  local host_line="  - http:"
  [ -n "$2" ] && host_line="  - host: $2
    http:"
  cat <<YAML
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: $1, namespace: default}
spec:
  rules:
$host_line
      paths:
      - {path: /, pathType: Prefix, backend: {service: {name: be, port: {number: 80}}}}
YAML
}
{ service_yaml; ingress_yaml all ""; } > "$P/routes.yaml"
{ service_yaml; ingress_yaml all ""; for i in $(seq 1 999); do ingress_yaml "r$i" "host-$i.example.com"; done; } > "$P/routes-1000.yaml"

start_portico() { # name table http https h3
  local name=$1 table=$2
  setsid taskset -c "${PROXY_CPUS:-0}" "$BIN" --table "$table" --http "127.0.0.1:$3" --https "127.0.0.1:$4" \
    --h3 "127.0.0.1:$5" --cert "$C/cert.pem" --key "$C/key.pem" --no-session-resumption \
    --workers "$WORKERS" > "$P/$name.out" 2> "$P/$name.err" < /dev/null &
  echo $! > "$P/$name.pid"
  for _ in $(seq 1 100); do grep -q '^ready' "$P/$name.out" 2>/dev/null && return 0; sleep 0.1; done
  log "$name did not start: $(cat "$P/$name.err")"; return 1
}
stop_portico() {
  local pid; pid=$(cat "$P/$1.pid" 2>/dev/null) || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
  rm -f "$P/$1.pid"
}
cleanup() {
  stop_portico portico; stop_portico portico1000
  [ "$KEEP" = 1 ] || bash "$SHARED/anchors-setup.sh" down || true
}
trap cleanup EXIT

if [ "$INSTR" = 1 ]; then
  command -v valgrind >/dev/null && command -v callgrind_control >/dev/null || { log "needs valgrind"; exit 1; }
  N=${IREQS:-6000}
  valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.%p" \
    "$BIN" --table "$P/routes.yaml" --http 127.0.0.1:18482 --workers 1 > "$P/cg.out" 2> "$P/cg.err" < /dev/null &
  vpid=$!
  for _ in $(seq 1 300); do grep -q '^ready' "$P/cg.out" 2>/dev/null && break; sleep 0.2; done
  h2load --h1 -n 2000 -c 64 http://127.0.0.1:18482/ > /dev/null
  callgrind_control -z "$vpid" > /dev/null
  h2load --h1 -n "$N" -c 64 http://127.0.0.1:18482/ | grep -E '^(requests|status codes):' >&2
  callgrind_control -d "$vpid" > /dev/null
  kill -TERM "$vpid"; wait "$vpid" || true
  ir=$(grep -h '^summary:' "$OUT"/callgrind.*.1 | awk '{print $2}')
  echo "instructions per proxied h1 keep-alive request: $((ir / N)) ($ir over $N requests)" | tee "$OUT/instructions.txt"
  exit 0
fi

start_portico portico "$P/routes.yaml" 18480 18843 18843
curl -s --max-time 5 --cacert "$C/ca.pem" "https://localhost:18843/" "http://127.0.0.1:18480/" | tr '\n' ' ' >&2; echo >&2

mapfile -t anchors < <(bash "$SHARED/anchors-setup.sh" targets | grep -E '^(direct|nginx|haproxy):')
targets=("${anchors[@]}" "portico:18480:18843:18843:$(cat "$P/portico.pid")")
log "targets: ${targets[*]}"
bash "$SHARED/proxy-bench.sh" -r "$RUNS" -d "$DUR" -T "$TESTS" -o "$OUT" -q "${QUIET:-20}" \
  -B "$(bash "$SHARED/anchors-setup.sh" backend-pids)" "${targets[@]}"
hwm() { awk '/VmHWM/{print $2" "$3}' "/proc/$1/status"; }

# User/kernel split: one run per test and proxy; the CPU of the process serving the traffic
# (nginx's worker, HAProxy's only process, Portico) from /proc/PID/stat around it.
cpu_split() { # name pid test http_port https_port
  local name=$1 pid=$2 t=$3 n u0 s0 u1 s1 out
  read -r u0 s0 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  case $t in
    h1c64) out=$(taskset -c 1 wrk -t1 -c64 -d"${DUR}s" "http://127.0.0.1:$4/" 2>&1) ;;
    h1c256) out=$(taskset -c 1 wrk -t1 -c256 -d"${DUR}s" "http://127.0.0.1:$4/" 2>&1) ;;
    tls64) out=$(taskset -c 1 wrk -t1 -c64 -d"${DUR}s" "https://127.0.0.1:$5/" 2>&1) ;;
    h2) out=$(taskset -c 1 h2load -c64 -m10 -D"$DUR" "https://127.0.0.1:$5/" 2>&1) ;;
  esac
  read -r u1 s1 < <(awk '{print $14, $15}' "/proc/$pid/stat")
  case $t in
    h2) n=$(echo "$out" | awk '/^requests:/{print $8}') ;;
    *) n=$(echo "$out" | awk '/requests in/{print $1}') ;;
  esac
  python3 - "$name" "$t" "$n" "$DUR" "$((u1 - u0))" "$((s1 - s0))" "$(getconf CLK_TCK)" <<'PY'
import sys
name, test, n, dur, du, ds, tck = sys.argv[1], sys.argv[2], int(sys.argv[3] or 0), float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), int(sys.argv[7])
if n == 0:
    print(f"| {test} | {name} | failed | | | |"); sys.exit()
u, s = du / tck / n * 1e6, ds / tck / n * 1e6
print(f"| {test} | {name} | {n / dur:,.0f} | {u:.2f} | {s:.2f} | {u + s:.2f} |")
PY
}
if [ "$SPLIT" = 1 ]; then
  ngx_worker=$(pgrep -P "$(cat "$ANCHORS_DIR/nginx/nginx.pid")" | head -1)
  hap=$(cat "$ANCHORS_DIR/haproxy.started.pid")
  {
    echo "| test | proxy | req/s | user µs/req | kernel µs/req | total µs/req |"
    echo "|---|---|---:|---:|---:|---:|"
    for t in h1c64 h1c256 tls64 h2; do
      cpu_split nginx "$ngx_worker" "$t" 18080 18443
      cpu_split haproxy "$hap" "$t" 18180 18543
      cpu_split portico "$(cat "$P/portico.pid")" "$t" 18480 18843
    done
  } | tee "$OUT/split.md"
fi
echo "portico (1 route) peak RSS after the whole matrix: $(hwm "$(cat "$P/portico.pid")")" | tee "$OUT/rss.txt"

# RSS with a 1,000-route table: idle, then after 10 s of h1 load through it.
start_portico portico1000 "$P/routes-1000.yaml" 18481 18844 18844
pid=$(cat "$P/portico1000.pid")
echo "portico (1,000 routes) peak RSS at start: $(hwm "$pid")" | tee -a "$OUT/rss.txt"
taskset -c 1 wrk -t1 -c256 -d10s -H 'Host: host-500.example.com' http://127.0.0.1:18481/ > "$OUT/rss-load.log" 2>&1 || true
taskset -c 1 wrk -t1 -c64 -d5s -H 'Host: host-7.example.com' https://127.0.0.1:18844/ >> "$OUT/rss-load.log" 2>&1 || true
echo "portico (1,000 routes) peak RSS after h1 c256 + TLS c64 load: $(hwm "$pid")" | tee -a "$OUT/rss.txt"
log "results in $OUT"
