#!/usr/bin/env bash
# Image serving benchmark, side by side in one run: N concurrent downloads (default 134, a rack's
# deploy agents at once) of one OS-image-sized file of incompressible data, from Kiln's boot HTTP
# server (/files/images/..., release build) and from nginx (sendfile on, worker_processes auto,
# own minimal config), both in the same namespace lab serving the same directory. The clients run
# in the lab's client namespace: examples/http_load.rs (N concurrent GETs on one tokio runtime,
# bodies counted and discarded), or `CLIENT=curl` for one curl process with N parallel transfers.
# Each figure is the best of 3 runs, Kiln and nginx alternating; a run counts only if all N got
# status 200 and every byte. Also prints the servers' CPU time for the best run.
# Usage: bash tests/bench/image-serve.sh [N] [SIZE_MiB ...]   (default: 134 128; root; installs
#        nginx, curl, bc if missing). KILN=PATH compares another kiln binary (e.g. an older build);
#        SERVER_SYSCTL="key=value ..." is applied in the servers' namespace (tuning experiments).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-134}
shift || true
SIZES=("${@:-128}")
CLIENT=${CLIENT:-http_load}
need=()
command -v bc >/dev/null || need+=(bc)
command -v curl >/dev/null || need+=(curl)
command -v nginx >/dev/null || need+=(nginx)
source tests/bench/lab.sh
install_peers "${need[@]}"
cargo build --release --locked --quiet --bin kiln --example http_load
KILN=${KILN:-${CARGO_TARGET_DIR:-$PWD/target}/release/kiln}
LOAD=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/http_load
KILN_PORT=8080 NGINX_PORT=8081
ROOT=$WORK/www # nginx's root; Kiln's files root is $ROOT/files, so both serve /files/images/...
mkdir -p "$ROOT/files/images"

kiln_pid= nginx_pid=
start_kiln() {
    mkdir -p "$WORK/kiln"
    ip netns exec "$NS" "$KILN" --data-dir "$WORK/kiln" --log-level warn serve --listen 127.0.0.1:0 \
        --boot-interface br0 --boot-http-port $KILN_PORT --dhcp-mode off --no-router-advertisements \
        --files-root "$ROOT/files" --power-sync-interval 0 >/dev/null 2>"$WORK/kiln.log" &
    kiln_pid=$!
    wait_kiln "$WORK/kiln"
}
start_nginx() {
    mkdir -p "$WORK/nginx"
    cat > "$WORK/nginx/nginx.conf" <<CONF
daemon off;
user root;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 4096; }
http {
    sendfile on;
    tcp_nopush on;
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server { listen 10.78.0.1:$NGINX_PORT; root $ROOT; }
}
CONF
    ip netns exec "$NS" nginx -e "$WORK/nginx/error.log" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" \
        >/dev/null 2>&1 &
    nginx_pid=$!
    sleep 0.5
}
stop_servers() {
    for pid in $kiln_pid $nginx_pid; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
    kiln_pid= nginx_pid=
}
trap 'stop_servers; lab_cleanup' EXIT

# CPU seconds (user + system) used so far by a process and its children still running (nginx's
# workers).
cpu_seconds() {
    local ticks=0 pid
    for pid in "$1" $(pgrep -P "$1" || true); do
        # Fields 14 and 15 of /proc/PID/stat: utime, stime (the name field has no spaces here).
        ticks=$((ticks + $(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "scale=2; $ticks / $(getconf CLK_TCK)" | bc
}

# One run of N downloads; prints "SECONDS COMPLETE".
run_once() {
    local url=$1 size=$2
    if [ "$CLIENT" = curl ]; then
        local args=() i start end
        for i in $(seq "$N"); do args+=(-o /dev/null "$url"); done
        start=$(date +%s.%N)
        local codes
        codes=$(ip netns exec "$CL" curl -s --no-progress-meter --parallel --parallel-max "$N" \
            -w '%{http_code} %{size_download}\n' "${args[@]}" || true)
        end=$(date +%s.%N)
        echo "$(echo "$end - $start" | bc) $(grep -c "^200 $size\$" <<<"$codes" || true)"
    else
        ip netns exec "$CL" "$LOAD" "$url" "$N" "$size" 2>>"$WORK/client.log" | cut -d' ' -f1,2
    fi
}

for setting in ${SERVER_SYSCTL:-}; do ip netns exec "$NS" sysctl -q -w "$setting"; done
start_kiln
start_nginx
echo "load: $(cut -d' ' -f1-3 /proc/loadavg), client: $CLIENT, $(nproc) cores, $(nginx -v 2>&1 | sed 's/.*: //')" >&2
printf '%-8s %8s %10s %10s %10s %12s %14s\n' file server "wall (s)" "MB/s" complete "server CPU s" "÷ nginx MB/s"
for mib in "${SIZES[@]}"; do
    file=test-$mib.raw.zst
    head -c "${mib}M" /dev/urandom > "$ROOT/files/images/$file"
    size=$(stat -c %s "$ROOT/files/images/$file")
    declare -A best=() ok=() cpu=() mbs=()
    for server in kiln nginx; do best[$server]=999999 ok[$server]=0 cpu[$server]=-; done
    for _ in 1 2 3; do
        for server in kiln nginx; do
            if [ $server = kiln ]; then port=$KILN_PORT pid=$kiln_pid; else port=$NGINX_PORT pid=$nginx_pid; fi
            c0=$(cpu_seconds "$pid")
            read -r t complete < <(run_once "http://10.78.0.1:$port/files/images/$file" "$size") || true
            c1=$(cpu_seconds "$pid")
            if [ "$complete" = "$N" ] && (($(echo "$t < ${best[$server]}" | bc))); then
                best[$server]=$t ok[$server]=$complete cpu[$server]=$(echo "$c1 - $c0" | bc)
            elif [ "$complete" != "$N" ]; then
                echo "$server: only $complete of $N complete in one run ($t s)" >&2
            fi
        done
    done
    for server in kiln nginx; do
        mbs[$server]=$(echo "scale=1; $size * $N / ${best[$server]} / 1000000" | bc)
    done
    for server in kiln nginx; do
        ratio=$(echo "scale=3; ${mbs[$server]} / ${mbs[nginx]}" | bc)
        printf '%-8s %8s %10.3f %10s %10s %12s %14.2f\n' "${mib}MiB" "$server" "${best[$server]}" \
            "${mbs[$server]}" "${ok[$server]}/$N" "${cpu[$server]}" "$ratio"
    done
    rm -f "$ROOT/files/images/$file"
done
