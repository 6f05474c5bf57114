#!/usr/bin/env bash
# Kiln's main job on the embedded default, as far as it exists today: a virtual rack of two QEMU
# VMs (TCG) behind `kiln vbmc` Redfish BMCs, in a network namespace this script creates. Kiln
# enrolls them, verifies each BMC, sets one-time PXE, powers them on, and each VM network-boots
# from Kiln's own DHCP/TFTP/HTTP into its per-node iPXE script; then the node table, boot events
# and timeline are shown and everything is powered off and removed.
# (Imaging and containers arrive with the provisioning and deployer issues; `kiln lab demo` will
# replace this script.)
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -e /usr/lib/ipxe/undionly.kpxe ] || need+=(ipxe)
command -v ip >/dev/null || need+=(iproute2)
if ((${#need[@]})); then
    made=0
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ "$made" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
cargo build --locked --quiet --bin kiln
kiln=$PWD/target/debug/kiln

ns=kiln-demo-$$
work=$(mktemp -d /tmp/kiln-demo.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "== virtual rack: namespace $ns, bridge br0 10.66.0.1/24, two VMs"
ip netns add "$ns"
ip -n "$ns" link set lo up
ip -n "$ns" link add br0 type bridge
ip -n "$ns" addr add 10.66.0.1/24 dev br0
ip -n "$ns" link set br0 up
for i in 1 2; do
    ip -n "$ns" tuntap add dev "tap$i" mode tap
    ip -n "$ns" link set "tap$i" master br0 up
done
cat > "$work/vbmc.yaml" <<YAML
redfish_listen: 127.0.0.1:8000
username: admin
password: demo-password
state_dir: $work/vbmc
vms:
  - {name: rack-01, mac: "52:54:00:66:00:01", tap: tap1, memory_mb: 256}
  - {name: rack-02, mac: "52:54:00:66:00:02", tap: tap2, memory_mb: 256}
YAML
cat > "$work/rack.yaml" <<YAML
defaults:
  bmc: {kind: redfish, address: "http://127.0.0.1:8000", username: admin, password: demo-password}
  boot_mode: bios
nodes:
  - {name: rack-01, bmc: {system_id: rack-01}, nics: [{mac: "52:54:00:66:00:01"}], network: {address: 10.66.0.11, prefix: 24}, roles: [control]}
  - {name: rack-02, bmc: {system_id: rack-02}, nics: [{mac: "52:54:00:66:00:02"}], network: {address: 10.66.0.12, prefix: 24}, roles: [compute]}
YAML

ip netns exec "$ns" "$kiln" vbmc --config "$work/vbmc.yaml" 2>"$work/vbmc.log" &
pids+=($!)
ip netns exec "$ns" "$kiln" --data-dir "$work/data" serve --listen 127.0.0.1:6385 \
    --boot-interface br0 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "DHCP serving" "$work/daemon.log" 2>/dev/null && break; sleep 0.1; done

k() { echo "+ kiln $*"; ip netns exec "$ns" "$kiln" --data-dir "$work/data" "$@"; }
k inventory check "$work/rack.yaml"
k enroll "$work/rack.yaml"
k node manage rack-01 rack-02
for _ in $(seq 100); do
    [ "$(ip netns exec "$ns" "$kiln" --data-dir "$work/data" node list | grep -c manageable)" = 2 ] && break; sleep 0.2
done
k node provide rack-01 rack-02
sleep 1.5
for node in rack-01 rack-02; do
    k node boot-device "$node" pxe
    k node power "$node" on
done
echo "== waiting for both VMs to boot their own iPXE script from Kiln"
for node in rack-01 rack-02; do
    for _ in $(seq 600); do grep -q "Kiln: $node" "$work/vbmc/$node.serial.log" 2>/dev/null && break; sleep 0.2; done
    grep -a "Kiln: $node" "$work/vbmc/$node.serial.log" | head -2 | tr -d '\r'
done
k node list
k node events rack-01
k dhcp leases
k node history rack-01
for node in rack-01 rack-02; do k node power "$node" off; done
echo "demo finished: both VMs PXE-booted from Kiln through their (virtual) BMCs"
