#!/usr/bin/env bash
# TFTP benchmark, side by side in one run: the iPXE BIOS binary (undionly.kpxe) to N concurrent
# clients (default 134) from Kiln, dnsmasq and tftpd-hpa, each serving Debian's /usr/lib/ipxe in
# the same namespace lab. The clients are one curl process with N parallel transfers (blksize
# 1468, as iPXE asks). Prints the wall time for all N transfers and the aggregate MB/s; each
# figure is the best of 3 runs.
# Usage: bash tests/bench/tftp.sh [N]   (root; installs tftpd-hpa, dnsmasq-base, ipxe, curl)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-134}
need=()
command -v bc >/dev/null || need+=(bc)
command -v in.tftpd >/dev/null || need+=(tftpd-hpa)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v curl >/dev/null || need+=(curl)
[ -e /usr/lib/ipxe/undionly.kpxe ] || need+=(ipxe)
source tests/bench/lab.sh
install_peers "${need[@]}"
cargo build --release --locked --quiet --bin kiln
KILN=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln
FILE=undionly.kpxe
SIZE=$(stat -c %s /usr/lib/ipxe/$FILE)

start_kiln() {
    rm -rf "$WORK/kiln"; mkdir -p "$WORK/kiln"
    ip netns exec "$NS" "$KILN" --data-dir "$WORK/kiln" --log-level warn serve --listen 127.0.0.1:0 \
        --boot-interface br0 --dhcp-mode off --no-router-advertisements --tftp-root /usr/lib/ipxe >/dev/null 2>"$WORK/kiln.log" &
    server_pid=$!
    wait_kiln "$WORK/kiln"
}
start_dnsmasq() {
    ip netns exec "$NS" dnsmasq --no-daemon --port=0 --interface=br0 --bind-interfaces --enable-tftp \
        --tftp-root=/usr/lib/ipxe --conf-file=/dev/null >/dev/null 2>"$WORK/dnsmasq.log" &
    server_pid=$!
    sleep 0.5
}
start_tftpd_hpa() {
    ip netns exec "$NS" in.tftpd --foreground --listen --address 10.78.0.1:69 --secure /usr/lib/ipxe >/dev/null 2>"$WORK/tftpd.log" &
    server_pid=$!
    sleep 0.5
}

urls=()
for i in $(seq "$N"); do urls+=(-o "$WORK/out/$i" "tftp://10.78.0.1/$FILE"); done

run_once() {
    rm -rf "$WORK/out"; mkdir -p "$WORK/out"
    local start end
    start=$(date +%s.%N)
    ip netns exec "$CL" curl -s --no-progress-meter --parallel --parallel-max "$N" --tftp-blksize 1468 "${urls[@]}" || true
    end=$(date +%s.%N)
    local ok; ok=$(find "$WORK/out" -type f -size "${SIZE}c" | wc -l)
    echo "$(echo "$end - $start" | bc) $ok"
}

printf '%-10s %14s %12s %10s\n' server "wall (s)" "MB/s" "complete"
for server in kiln dnsmasq tftpd_hpa; do
    "start_$server"
    best=999 okbest=0
    for _ in 1 2 3; do
        read -r t ok < <(run_once)
        if (( $(echo "$t < $best" | bc) )); then best=$t okbest=$ok; fi
    done
    stop_server
    mbs=$(echo "scale=1; $SIZE * $okbest / $best / 1000000" | bc)
    printf '%-10s %14.3f %12s %10s\n' "$server" "$best" "$mbs" "$okbest/$N"
done
