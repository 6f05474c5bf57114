#!/usr/bin/env bash
# Kiln's main job on the embedded default: a virtual rack of two QEMU VMs (TCG, one BIOS, one
# UEFI) behind `kiln vbmc` Redfish BMCs, in a network namespace this script creates. Kiln builds
# (or reuses, cached) its deploy ramdisk and Debian 12 image, enrolls the rack, verifies each BMC,
# and deploys both nodes: PXE → ramdisk → image + config drive → reboot from disk → Debian with
# the inventory's hostname and a Docker Engine that accepts only Kiln's client certificate.
# Then the node table, one node's timeline and `docker info` over mutual TLS are shown, and
# everything is powered off and removed. (Containers on top arrive with `kiln lab demo`.)
# First run on a fresh machine: ~3 min to build the images, then ~3 min to deploy.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -e /usr/lib/ipxe/undionly.kpxe ] || need+=(ipxe)
command -v ip >/dev/null || need+=(iproute2)
[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
command -v curl >/dev/null || need+=(curl)
for tool in debootstrap:debootstrap mkfs.ext4:e2fsprogs mkfs.vfat:dosfstools mcopy:mtools sfdisk:fdisk zstd:zstd cpio:cpio; do
    command -v "${tool%%:*}" >/dev/null || need+=("${tool##*:}")
done
if ((${#need[@]})); then
    made=0
    [ -e /usr/sbin/policy-rc.d ] || { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ "$made" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
cargo build --locked --quiet --bins
kiln=$PWD/target/debug/kiln
files=/var/cache/kiln-images/files
echo "== images: deploy ramdisk and Debian 12 (cached under $files)"
"$kiln" image build ramdisk --files-root "$files" --recipes images --agent target/debug/kiln-agent
"$kiln" image build os --files-root "$files" --recipes images

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
for i in 1 2; do truncate -s 4G "$work/rack-0$i.raw"; done
cat > "$work/vbmc.yaml" <<YAML
redfish_listen: 127.0.0.1:8000
username: admin
password: demo-password
state_dir: $work/vbmc
vms:
  - {name: rack-01, mac: "52:54:00:66:00:01", tap: tap1, disk: $work/rack-01.raw, memory_mb: 1024, uefi: false}
  - {name: rack-02, mac: "52:54:00:66:00:02", tap: tap2, disk: $work/rack-02.raw, memory_mb: 1024, uefi: true}
YAML
cat > "$work/rack.yaml" <<YAML
defaults:
  bmc: {kind: redfish, address: "http://127.0.0.1:8000", username: admin, password: demo-password}
  image: {source: debian-12}
nodes:
  - {name: rack-01, bmc: {system_id: rack-01}, nics: [{mac: "52:54:00:66:00:01"}], boot_mode: bios, network: {address: 10.66.0.11, prefix: 24}, roles: [control]}
  - {name: rack-02, bmc: {system_id: rack-02}, nics: [{mac: "52:54:00:66:00:02"}], boot_mode: uefi, network: {address: 10.66.0.12, prefix: 24}, roles: [compute]}
YAML

ip netns exec "$ns" "$kiln" vbmc --config "$work/vbmc.yaml" 2>"$work/vbmc.log" &
pids+=($!)
ip netns exec "$ns" "$kiln" --data-dir "$work/data" serve --listen 127.0.0.1:6385 \
    --boot-interface br0 --files-root "$files" 2>"$work/daemon.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "DHCP serving" "$work/daemon.log" 2>/dev/null && break; sleep 0.1; done

k() { echo "+ kiln $*"; ip netns exec "$ns" "$kiln" --data-dir "$work/data" "$@"; }
state() { ip netns exec "$ns" "$kiln" --data-dir "$work/data" --json node show "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["provision_state"])'; }
wait_for() {
    local want=$1 limit=$2
    for _ in $(seq "$limit"); do
        [ "$(state rack-01)" = "$want" ] && [ "$(state rack-02)" = "$want" ] && return 0
        sleep 1
    done
    echo "nodes did not reach $want"; k node list; tail -30 "$work/daemon.log"; exit 1
}
k inventory check "$work/rack.yaml"
k enroll "$work/rack.yaml"
k node manage rack-01 rack-02
wait_for manageable 60
k node provide rack-01 rack-02
wait_for available 60
start=$(date +%s)
k node deploy rack-01 rack-02
echo "== deploying (progress every 20 s)"
for _ in $(seq 60); do
    k node list | grep rack- || true
    [ "$(state rack-01)" = active ] && [ "$(state rack-02)" = active ] && break
    case "$(state rack-01) $(state rack-02)" in *deploy-failed*) k node list; exit 1 ;; esac
    sleep 20
done
wait_for active 5
echo "== both nodes active $(( $(date +%s) - start )) s after 'kiln node deploy'"
k node list
k node show rack-02
k node history rack-01
echo "== Docker Engine on each node over mutual TLS, with Kiln's CA client certificate"
ca=$work/data/ca
for i in 1 2; do
    ip netns exec "$ns" curl -sS --max-time 20 --cacert "$ca/ca.pem" --cert "$ca/client.pem" --key "$ca/client-key.pem" \
        "https://10.66.0.1$i:2376/info" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("  " + d["Name"] + ": " + d["OperatingSystem"] + ", Docker " + d["ServerVersion"])'
done
for node in rack-01 rack-02; do k node power "$node" off; done
echo "demo finished: both VMs were provisioned by Kiln through their (virtual) BMCs"
