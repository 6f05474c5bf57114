#!/usr/bin/env bash
# What Kiln's router advertisements save at every network boot: a BIOS QEMU VM (TCG, iPXE ROM)
# from power-on to its node script running, with Kiln answering IPv6 router solicitations and with
# --no-router-advertisements, best of 3 runs each.
# Usage: bash tests/bench/boot-ra.sh   (root; needs qemu-system-x86, ipxe)
set -euo pipefail
cd "$(dirname "$0")/../.."
command -v bc >/dev/null || apt-get install -y -qq bc >/dev/null
source tests/bench/lab.sh
cargo build --release --locked --quiet --bin kiln
KILN=${CARGO_TARGET_DIR:-$PWD/target}/release/kiln
MAC=52:54:00:78:00:10
ip -n "$NS" tuntap add dev tap0 mode tap
ip -n "$NS" link set tap0 master br0 up

cat > "$WORK/rack.yaml" <<YAML
nodes:
  - name: ra-bench
    bmc: {kind: ipmi, address: 10.1.0.1, username: u, password: p}
    nics: [{mac: "$MAC"}]
    boot_mode: bios
    network: {address: 10.78.0.60, prefix: 16}
YAML

boot_once() { # $@: extra serve flags; prints seconds from VM start to the script's echo
    rm -rf "$WORK/kiln"; mkdir -p "$WORK/kiln"
    ip netns exec "$NS" "$KILN" --data-dir "$WORK/kiln" --log-level warn serve --listen 127.0.0.1:0 \
        --boot-interface br0 "$@" >/dev/null 2>"$WORK/kiln.log" &
    server_pid=$!
    wait_kiln "$WORK/kiln"
    ip netns exec "$NS" "$KILN" --data-dir "$WORK/kiln" enroll "$WORK/rack.yaml" >/dev/null
    rm -f "$WORK/serial.log"
    local start; start=$(date +%s.%N)
    ip netns exec "$NS" qemu-system-x86_64 -accel tcg -machine pc,graphics=off -m 256 -nodefaults \
        -display none -vga none -monitor none -no-reboot -boot n \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no -device virtio-net-pci,netdev=n0,mac=$MAC \
        -serial "file:$WORK/serial.log" >/dev/null 2>&1 &
    local vm=$!
    until grep -q "Kiln: ra-bench" "$WORK/serial.log" 2>/dev/null; do sleep 0.05; done
    local end; end=$(date +%s.%N)
    kill "$vm"; wait "$vm" 2>/dev/null || true
    stop_server
    echo "$end - $start" | bc
}

best() { local b=999 t; for _ in 1 2 3; do t=$(boot_once "$@"); (( $(echo "$t < $b" | bc) )) && b=$t; done; echo "$b"; }
with=$(best)
without=$(best --no-router-advertisements)
printf 'power-on to node script, BIOS VM under TCG (best of 3)\n'
printf '  with Kiln router advertisements:    %6.2f s\n' "$with"
printf '  without (--no-router-advertisements): %6.2f s\n' "$without"
printf '  saved per boot:                     %6.2f s\n' "$(echo "$without - $with" | bc)"
