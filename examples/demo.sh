#!/usr/bin/env bash
# Kiln's main job on the embedded default, as far as it exists today: start the daemon with a
# throwaway data directory, enroll the example rack, drive its nodes through verification and
# cleaning to `available`, show the nodes and one node's timeline, then stop and clean up.
# (The virtual-rack issue replaces this with `kiln lab demo`: QEMU VMs PXE-booted and imaged.)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --locked --quiet --bin kiln
kiln=./target/debug/kiln
data=$(mktemp -d /tmp/kiln-demo.XXXXXX)
cleanup() { [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$data"; }
trap cleanup EXIT

"$kiln" --data-dir "$data" serve --listen 127.0.0.1:0 2>"$data/daemon.log" &
pid=$!
for _ in $(seq 100); do [ -s "$data/api-url" ] && break; sleep 0.1; done
[ -s "$data/api-url" ] || { cat "$data/daemon.log"; exit 1; }

k() { echo "+ kiln $*"; "$kiln" --data-dir "$data" "$@"; }
k inventory check examples/rack.yaml
k enroll examples/rack.yaml
k node manage ctl-01 cmp-01
sleep 1.5
k node provide ctl-01 cmp-01
sleep 1.5
k node list
k node history ctl-01
echo "demo finished; daemon log had $(wc -l < "$data/daemon.log") lines"
