#!/usr/bin/env bash
# Memory of the Kiln daemon with N enrolled nodes (default 1000) and boot services on: enrolls a
# generated N-node inventory, lists the nodes through the API, then runs 134 clients' DHCP
# avalanche against it (when perfdhcp is installed) and prints the daemon's peak RSS (VmHWM).
# Usage: bash tests/bench/rss.sh [N]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
source tests/bench/lab.sh
cargo build --release --locked --quiet --bin kiln
KILN=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln
inv=$WORK/rack.yaml
{
    echo "defaults:"
    echo "  bmc: {kind: ipmi, username: admin, password: secret}"
    echo "nodes:"
    for i in $(seq 0 $((N - 1))); do
        printf '  - name: n%04d\n    bmc: {address: 10.90.%d.%d}\n    nics: [{mac: "52:54:01:00:%02x:%02x"}]\n    network: {address: 10.78.%d.%d, prefix: 16}\n' \
            "$i" $((i / 250)) $((i % 250 + 1)) $((i / 256)) $((i % 256)) $((i / 250 + 100)) $((i % 250 + 1))
    done
} > "$inv"
mkdir -p "$WORK/kiln"
ip netns exec "$NS" "$KILN" --data-dir "$WORK/kiln" --log-level warn serve --listen 127.0.0.1:0 \
    --boot-interface br0 --discovery-pool 10.78.1.0-10.78.9.255 --no-router-advertisements >/dev/null 2>"$WORK/kiln.log" &
server_pid=$!
wait_kiln "$WORK/kiln"
k() { ip netns exec "$NS" "$KILN" --data-dir "$WORK/kiln" "$@"; }
t0=$(date +%s.%N); k enroll "$inv" | tail -1; t1=$(date +%s.%N)
k node list --json > /dev/null
if command -v perfdhcp >/dev/null; then
    ip netns exec "$CL" perfdhcp -4 -l eth0 --scenario avalanche -R 134 10.78.0.1 >/dev/null 2>&1 || true
fi
rss=$(awk '/VmRSS/{print $2}' /proc/$server_pid/status)
hwm=$(awk '/VmHWM/{print $2}' /proc/$server_pid/status)
printf 'nodes: %d   enroll: %.2f s   RSS now: %.1f MB   peak RSS: %.1f MB\n' "$N" "$(echo "$t1 - $t0" | bc)" \
    "$(echo "$rss / 1024" | bc -l)" "$(echo "$hwm / 1024" | bc -l)"
