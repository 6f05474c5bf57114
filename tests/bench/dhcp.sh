#!/usr/bin/env bash
# DHCP benchmark, side by side in one run: Kiln vs dnsmasq vs ISC Kea, each serving the same
# namespace lab, loaded by Kea's perfdhcp from a second namespace (it acts as a relay, so every
# server sees the same relayed DORA traffic). Prints:
#   - avalanche: 134 clients at once, wall time until all 134 hold a lease (perfdhcp's figure);
#   - sustained: the highest rate (DORA/s, 5 s steps) with zero drops.
# Usage: bash tests/bench/dhcp.sh   (root; installs kea-dhcp4-server, kea-admin, dnsmasq-base)
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
command -v bc >/dev/null || need+=(bc)
command -v perfdhcp >/dev/null || need+=(kea-admin)
command -v kea-dhcp4 >/dev/null || need+=(kea-dhcp4-server)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
source tests/bench/lab.sh
install_peers "${need[@]}"
cargo build --release --locked --quiet --bin kiln
KILN=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln

POOL_FIRST=10.78.1.0 POOL_LAST=10.78.254.255

start_kiln() {
    rm -rf "$WORK/kiln"; mkdir -p "$WORK/kiln"
    # perfdhcp's clients are unknown MACs: Kiln serves them from its discovery pool.
    ip netns exec "$NS" "$KILN" --data-dir "$WORK/kiln" --log-level warn serve --listen 127.0.0.1:0 \
        --boot-interface br0 --discovery-pool "$POOL_FIRST-$POOL_LAST" --no-router-advertisements \
        --tftp-root /usr/lib/ipxe >/dev/null 2>"$WORK/kiln.log" &
    server_pid=$!
    wait_kiln "$WORK/kiln"
}
start_dnsmasq() {
    ip netns exec "$NS" dnsmasq --no-daemon --port=0 --interface=br0 --bind-interfaces --no-ping \
        --dhcp-range=$POOL_FIRST,$POOL_LAST,255.255.0.0,1h --dhcp-lease-max=100000 \
        --dhcp-leasefile="$WORK/dnsmasq.leases" --conf-file=/dev/null >/dev/null 2>"$WORK/dnsmasq.log" &
    server_pid=$!
    rm -f "$WORK"/dnsmasq.leases
    sleep 0.5
}
start_kea() {
    cat > "$WORK/kea.json" <<JSON
{"Dhcp4": {"interfaces-config": {"interfaces": ["br0"]},
  "lease-database": {"type": "memfile", "persist": false},
  "valid-lifetime": 3600,
  "subnet4": [{"id": 1, "subnet": "10.78.0.0/16", "pools": [{"pool": "$POOL_FIRST - $POOL_LAST"}]}],
  "loggers": [{"name": "kea-dhcp4", "severity": "WARN", "output_options": [{"output": "$WORK/kea.log"}]}]}}
JSON
    mkdir -p /run/kea
    KEA_PIDFILE_DIR=$WORK KEA_LOCKFILE_DIR=$WORK ip netns exec "$NS" kea-dhcp4 -c "$WORK/kea.json" >/dev/null 2>&1 &
    server_pid=$!
    sleep 1
}

perf() { ip netns exec "$CL" perfdhcp -4 -l eth0 "$@" 10.78.0.1 2>&1; }

# Sets $result to the seconds perfdhcp needed to provision 134 clients arriving at once.
avalanche() {
    local out; out=$(perf --scenario avalanche -R 134 -s 7 || true)
    result=$(echo "$out" | sed -n 's/^It took \([0-9:.]*\) to provision 134 clients.*/\1/p' | awk -F: '{printf "%.3f", $1*3600+$2*60+$3}')
}

# Sets $result to the highest rate with no dropped exchange (fresh server for every step).
sustained() {
    local best=0 rate out drops recv
    for rate in 250 500 1000 1500 2000 3000 4000 6000 8000; do
        out=$(perf -r "$rate" -R 100000 -p 5 -b "mac=00:0c:$(printf '%02x' $((rate % 256))):00:00:00" || true)
        drops=$(echo "$out" | awk '/Statistics for: REQUEST-ACK/{f=1} f && /^drops:/{print $2; exit}')
        recv=$(echo "$out" | awk '/Statistics for: REQUEST-ACK/{f=1} f && /^received packets:/{print $3; exit}')
        if [ "${drops:-1}" = 0 ] && [ "${recv:-0}" -gt 0 ]; then best=$rate; else break; fi
        stop_server; "start_$1"
    done
    result=$best
}

printf '%-8s %22s %26s\n' server "avalanche 134 (s)" "loss-free DORA/s (5 s)"
for server in kiln dnsmasq kea; do
    "start_$server"; avalanche; a=$result; stop_server
    "start_$server"; sustained "$server"; s=$result; stop_server
    printf '%-8s %22s %26s\n' "$server" "$a" "$s"
done
