#!/usr/bin/env bash
# Kiln vs OpenStack Ironic standalone, side by side, on the same simulated Redfish BMCs: sushy-tools'
# fake driver (tests/bench/ironic/sushy_instant.py: power changes land at once) serving NODES
# systems on loopback. Phases both can do: enroll, verify (manage: BMC credentials checked),
# power on confirmed, power off confirmed, one-time PXE boot device. One run each, same machine,
# same client code (tests/bench/ironic/drive.py), a fresh BMC emulator (fresh state) per run.
#
# From nothing: a venv with Ironic + sushy-tools from PyPI (kept in $VENV for the next run), the
# release kiln at $KILN (default target/release/kiln; built with cargo if absent),
# throwaway state dirs, loopback only (no DHCP, no namespaces needed), everything stopped and
# removed on exit (the daemons' logs are kept next to $OUT).
#
# Timing: each phase runs from its first request until the control plane reports every node
# done (Ironic: 202 then node-list polling; the poller waits max(50 ms, 4x the last list call)
# so it never holds the single-process Ironic's API busy more than a fifth of the time).
#
#   bash tests/bench/ironic.sh                   # 134 nodes, 16 requests in flight
#   NODES=20 CONCURRENCY=8 KILN=target/release/kiln bash tests/bench/ironic.sh
#   (~8 min at 134 nodes on 2 cores, almost all of it Ironic)
#
# Prints a markdown table (also left in $OUT, default /tmp/kiln-bench-ironic.md).
set -euo pipefail

NODES=${NODES:-134}
CONCURRENCY=${CONCURRENCY:-16}
VENV=${VENV:-/opt/kiln-bench/ironic-venv}
IRONIC_VERSION=${IRONIC_VERSION:-39.0.0}
SUSHY_VERSION=${SUSHY_VERSION:-2.2.0}
OUT=${OUT:-/tmp/kiln-bench-ironic.md}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

source "$HERE/ironic/procs.sh"

# --- tools ------------------------------------------------------------------------------------
python3 -c 'import venv, ensurepip' 2>/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
}
if ! "$VENV/bin/python" -c 'import ironic, sushy_tools.emulator.main, bcrypt' 2>/dev/null; then
    log "creating $VENV (ironic==$IRONIC_VERSION sushy-tools==$SUSHY_VERSION from PyPI, ~1 min)"
    rm -rf "$VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check \
        "ironic==$IRONIC_VERSION" "sushy-tools==$SUSHY_VERSION" bcrypt
fi
PY="$VENV/bin/python"
KILN=${KILN:-${CARGO_TARGET_DIR:-$REPO/target}/release/kiln}
if [[ ! -x "$KILN" ]]; then
    log "no kiln at $KILN: building kiln (release)"
    (cd "$REPO" && cargo build --release --quiet --bin kiln)
    KILN="${CARGO_TARGET_DIR:-$REPO/target}/release/kiln"
fi
[[ -x "$KILN" ]] || { echo "no kiln binary at $KILN" >&2; exit 1; }
IRONIC_VER=$("$PY" -c 'from importlib.metadata import version as v; print(v("ironic"))')
SUSHY_VER=$("$PY" -c 'from importlib.metadata import version as v; print(v("sushy-tools"), v("sushy"))')

# --- scratch space and clean-up ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/kiln-bench-ironic.XXXXXX)
cleanup() {
    stop_all
    # Daemon logs survive the run next to $OUT (for looking into where the time went).
    for f in ironic/ironic.log kiln/kiln.log sushy-ironic.log sushy-kiln.log; do
        [[ -f "$WORK/$f" ]] && cp "$WORK/$f" "${OUT%.md}-$(basename "$f")"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

SUSHY_PORT=$(free_port)
SUSHY_URL="http://127.0.0.1:$SUSHY_PORT"
"$PY" "$HERE/ironic/drive.py" setup "$WORK/bmc" "$NODES" "$SUSHY_URL"

# A fresh emulator (empty state dir: every system powered off, no boot override) per run.
start_sushy() {
    local state="$WORK/sushy-state-$1"
    rm -rf "$state"; mkdir -p "$state"
    BENCH_SUSHY_STATE="$state" start "$WORK/sushy-$1.log" \
        env BENCH_SUSHY_STATE="$state" "$PY" "$HERE/ironic/sushy_instant.py" \
        --config "$WORK/bmc/sushy.conf" -i 127.0.0.1 -p "$SUSHY_PORT"
    SUSHY_PID=$LAST_PID
    wait_http "$SUSHY_URL/redfish/v1/" -u "bench-admin:Bench-Redfish-S3cret"
}

# --- Ironic -----------------------------------------------------------------------------------
run_ironic() {
    local port dir=$WORK/ironic
    port=$(free_port)
    mkdir -p "$dir"
    cat >"$dir/ironic.conf" <<EOF
[DEFAULT]
auth_strategy = noauth
rpc_transport = none
host = localhost
enabled_hardware_types = redfish
enabled_power_interfaces = redfish
enabled_management_interfaces = redfish
enabled_boot_interfaces = ipxe
default_boot_interface = ipxe
enabled_deploy_interfaces = direct
default_deploy_interface = direct
enabled_inspect_interfaces = no-inspect
enabled_network_interfaces = noop
enabled_bios_interfaces = no-bios
enabled_console_interfaces = no-console
enabled_raid_interfaces = no-raid
enabled_rescue_interfaces = no-rescue
enabled_vendor_interfaces = no-vendor
enabled_firmware_interfaces = no-firmware
enabled_storage_interfaces = noop
log_file = $dir/ironic.log
use_stderr = false
debug = false

[api]
host_ip = 127.0.0.1
port = $port
# One list call returns every node (the driver asks for limit=10000).
max_limit = 10000

[database]
connection = sqlite:///$dir/ironic.sqlite

[conductor]
automated_clean = false
# Kiln's power sync is off for its run too: neither reads BMCs behind the benchmark's back.
sync_power_state_interval = 0

[dhcp]
dhcp_provider = none

[deploy]
http_url = http://127.0.0.1:1/
http_root = $dir/httproot

[pxe]
tftp_root = $dir/tftproot
tftp_master_path = $dir/tftproot/master

[oslo_concurrency]
lock_path = $dir/locks

[json_rpc]
auth_strategy = noauth
EOF
    mkdir -p "$dir/httproot" "$dir/tftproot/master" "$dir/locks"
    "$VENV/bin/ironic-dbsync" --config-file "$dir/ironic.conf" create_schema \
        >"$dir/dbsync.log" 2>&1 || { cat "$dir/dbsync.log" >&2; return 1; }
    start_sushy ironic
    start "$dir/stdout.log" "$VENV/bin/ironic" --config-file "$dir/ironic.conf"
    local ironic_pid=$LAST_PID
    wait_http "http://127.0.0.1:$port/v1/nodes" \
        || { tail -30 "$dir/ironic.log" "$dir/stdout.log" >&2; return 1; }
    # The conductor registers itself after the API answers; wait until it takes node calls.
    for _ in $(seq 300); do
        curl -fsS -H 'X-OpenStack-Ironic-API-Version: latest' \
            "http://127.0.0.1:$port/v1/conductors" 2>/dev/null | grep -q '"alive": *true' && break
        sleep 0.1
    done
    log "Ironic $IRONIC_VER: $NODES nodes, $CONCURRENCY requests in flight"
    "$PY" "$HERE/ironic/drive.py" run ironic --api "http://127.0.0.1:$port" \
        --nodes "$WORK/bmc/nodes.tsv" --pid "$ironic_pid" --bmc-pid "$SUSHY_PID" \
        --concurrency "$CONCURRENCY" --out "$WORK/ironic.json" \
        || { tail -40 "$dir/ironic.log" >&2; return 1; }
    stop "$ironic_pid"
    stop "$SUSHY_PID"
}

# --- Kiln -------------------------------------------------------------------------------------
run_kiln() {
    local port dir=$WORK/kiln
    port=$(free_port)
    mkdir -p "$dir/data"
    start_sushy kiln
    # No boot services (no --boot-interface: no DHCP/TFTP), power sync off (as for Ironic).
    start "$dir/kiln.log" "$KILN" --data-dir "$dir/data" --log-level warn serve \
        --listen "127.0.0.1:$port" --power-sync-interval 0
    local kiln_pid=$LAST_PID
    wait_http "http://127.0.0.1:$port/healthz" || { tail -30 "$dir/kiln.log" >&2; return 1; }
    for _ in $(seq 100); do [[ -s "$dir/data/api-url" ]] && break; sleep 0.1; done
    log "Kiln $("$KILN" --version): $NODES nodes, $CONCURRENCY requests in flight"
    "$PY" "$HERE/ironic/drive.py" run kiln --data-dir "$dir/data" \
        --inventory "$WORK/bmc/rack.yaml" --nodes "$WORK/bmc/nodes.tsv" \
        --pid "$kiln_pid" --bmc-pid "$SUSHY_PID" --concurrency "$CONCURRENCY" \
        --out "$WORK/kiln.json" || { tail -40 "$dir/kiln.log" >&2; return 1; }
    stop "$kiln_pid"
    stop "$SUSHY_PID"
}

run_ironic
run_kiln

{
    echo "Kiln vs Ironic $IRONIC_VER (sushy-tools/sushy $SUSHY_VER), $NODES nodes," \
         "$CONCURRENCY requests in flight, $(nproc) cores, $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    "$PY" "$HERE/ironic/drive.py" table "$WORK/kiln.json" "$WORK/ironic.json"
} | tee "$OUT"
cp "$WORK/kiln.json" "${OUT%.md}-kiln.json"
cp "$WORK/ironic.json" "${OUT%.md}-ironic.json"
