#!/usr/bin/env bash
# Deploy, Kiln vs OpenStack Ironic standalone: NODES nodes taken from enrolled to active with a
# 64 MiB whole-disk image, one run each, same machine, same client code
# (tests/bench/ironic/drive.py deploy). Each run is timed from the first deploy request until the
# control plane reports every node active (Ironic: 202 then node-list polling, as in ironic.sh).
#
# Kiln: `kiln lab up --sim --nodes NODES --sim-timing fast` (a network namespace of its own: `kiln
#   sim` with a Redfish BMC per server, every 4th also IPMI; simulated firmware doing real DHCP,
#   TFTP and HTTP against the Kiln daemon; Kiln's real agent writing the image to a hashing sparse
#   disk; the booted OS answering on its Docker port), driven from inside the namespace through
#   Kiln's REST API: enroll the lab's rack.yaml, manage, provide, deploy. `kiln lab down` at exit.
# Ironic 39 (venv $VENV, as tests/bench/ironic.sh): redfish hardware type, ipxe boot with
#   dhcp_provider none (it only writes config files), direct deploy, against sushy-tools fake
#   systems (tests/bench/ironic/sushy_instant.py) on 127.0.0.1. The systems cannot network-boot,
#   so tests/bench/ironic/fake_ipa.py stands in for every deploy ramdisk: IPA's lookup, heartbeats
#   and agent REST API (over auto-TLS, as IPA) with a zero boot delay; it downloads the image over
#   HTTP and checks its sha256, writes nothing, and powers the system off through the BMC. nginx
#   on 127.0.0.1 serves the image (the same bytes as the sim's image, decompressed) and tiny
#   deploy kernel/ramdisk. Flow: enroll, manage, provide (automated_clean = false), set
#   instance_info, deploy. The run fails if the fake IPA saw any call it does not know.
#
# Network: Ironic's side is loopback only; Kiln's DHCP/TFTP stay inside the lab's namespace.
# Every daemon runs in a session of its own and is stopped, the lab taken down and the temp dir
# removed at exit, also on failure (logs are kept next to $OUT).
#
#   bash tests/bench/ironic-deploy.sh               # 134 nodes, 16 requests in flight
#   NODES=4 bash tests/bench/ironic-deploy.sh       # a quick check
#   HEARTBEAT_TIMEOUT=30 bash tests/bench/ironic-deploy.sh   # IPA heartbeats every 9-18 s
#   (~17 min at 134 nodes on 2 cores, all but ~20 s of it Ironic)
#
# Prints a markdown table (also left in $OUT, default /tmp/kiln-bench-ironic-deploy.md).
set -euo pipefail

NODES=${NODES:-134}
CONCURRENCY=${CONCURRENCY:-16}
VENV=${VENV:-/opt/kiln-bench/ironic-venv}
IRONIC_VERSION=${IRONIC_VERSION:-39.0.0}
SUSHY_VERSION=${SUSHY_VERSION:-2.2.0}
# [api]ramdisk_heartbeat_timeout: IPA heartbeats every 0.3-0.6 x this (Ironic's default: 300 s).
HEARTBEAT_TIMEOUT=${HEARTBEAT_TIMEOUT:-300}
OUT=${OUT:-/tmp/kiln-bench-ironic-deploy.md}
HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)

source "$HERE/ironic/procs.sh"

# --- tools ------------------------------------------------------------------------------------
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v zstd >/dev/null || need+=(zstd)
command -v curl >/dev/null || need+=(curl)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
    log "installing ${need[*]} (apt; their services are not started)"
    made=0
    [[ -e /usr/sbin/policy-rc.d ]] || {
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; made=1
    }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends "${need[@]}" >/dev/null
    [[ $made == 1 ]] && rm -f /usr/sbin/policy-rc.d
fi
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
    (cd "$REPO" && cargo build --release --locked --quiet --bin kiln)
    KILN="${CARGO_TARGET_DIR:-$REPO/target}/release/kiln"
fi
[[ -x "$KILN" ]] || { echo "no kiln binary at $KILN" >&2; exit 1; }
NGINX=$(command -v nginx)
IRONIC_VER=$("$PY" -c 'from importlib.metadata import version as v; print(v("ironic"))')
SUSHY_VER=$("$PY" -c 'from importlib.metadata import version as v; print(v("sushy-tools"), v("sushy"))')

# --- scratch space and clean-up ---------------------------------------------------------------
WORK=$(mktemp -d /tmp/kiln-bench-ironic-deploy.XXXXXX)
LAB=kdep$$
LAB_DIR=$WORK/lab
LAB_UP=0
cleanup() {
    stop_all
    if [[ $LAB_UP == 1 ]]; then
        cp "$LAB_DIR/daemon.log" "${OUT%.md}-kiln-daemon.log" 2>/dev/null || true
        cp "$LAB_DIR/vbmc.log" "${OUT%.md}-kiln-sim.log" 2>/dev/null || true
        "$KILN" lab down --name "$LAB" --dir "$LAB_DIR" >&2 || true
        ip netns del "$LAB" 2>/dev/null || true
    fi
    for f in ironic/ironic.log sushy.log fake-ipa.log fake-ipa.json nginx/error.log; do
        [[ -f "$WORK/$f" ]] && cp "$WORK/$f" "${OUT%.md}-$(basename "$f")"
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Kiln -------------------------------------------------------------------------------------
run_kiln() {
    log "Kiln $("$KILN" --version): kiln lab up --sim --nodes $NODES (timing fast)"
    LAB_UP=1
    "$KILN" lab up --sim --nodes "$NODES" --sim-timing fast --name "$LAB" --dir "$LAB_DIR" \
        >"$WORK/lab-up.log" 2>&1 || { cat "$WORK/lab-up.log" >&2; return 1; }
    local daemon_pid sim_pid
    daemon_pid=$(cat "$LAB_DIR/daemon.pid")
    sim_pid=$(cat "$LAB_DIR/vbmc.pid")
    for _ in $(seq 300); do [[ -s "$LAB_DIR/data/api-url" ]] && break; sleep 0.1; done
    ip netns exec "$LAB" curl -fsS -o /dev/null --retry 50 --retry-delay 0 --retry-connrefused \
        "$(cat "$LAB_DIR/data/api-url")/healthz"
    for _ in $(seq 300); do [[ -s "$LAB_DIR/rack.yaml" ]] && break; sleep 0.1; done
    ip netns exec "$LAB" "$PY" "$HERE/ironic/drive.py" deploy kiln --data-dir "$LAB_DIR/data" \
        --inventory "$LAB_DIR/rack.yaml" --bmc-password "$LAB_DIR/bmc-password" \
        --pid "$daemon_pid" --rack-pid "$sim_pid" --concurrency "$CONCURRENCY" \
        --out "$WORK/kiln.json" || { tail -40 "$LAB_DIR/daemon.log" >&2; return 1; }
    # The sim's image, for Ironic: the same bytes, decompressed (Ironic's direct deploy of an
    # http image takes raw or qcow2, not zstd).
    mkdir -p "$WORK/www/images"
    zstd -q -d -c "$LAB_DIR/files/images/sim-os.raw.zst" >"$WORK/www/images/sim-os.raw"
    local raw_size
    raw_size=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["raw_size"])' \
        "$LAB_DIR/files/images/sim-os.json")
    [[ $(stat -c %s "$WORK/www/images/sim-os.raw") == "$raw_size" ]] \
        || { echo "decompressed sim image is not $raw_size bytes" >&2; return 1; }
    IMAGE_BYTES=$raw_size
    IMAGE_ZST_BYTES=$(stat -c %s "$LAB_DIR/files/images/sim-os.raw.zst")
    cp "$LAB_DIR/daemon.log" "${OUT%.md}-kiln-daemon.log"
    cp "$LAB_DIR/vbmc.log" "${OUT%.md}-kiln-sim.log"
    "$KILN" lab down --name "$LAB" --dir "$LAB_DIR" >&2
    LAB_UP=0
}

# --- Ironic -----------------------------------------------------------------------------------
run_ironic() {
    local api_port nginx_port sushy_port dir=$WORK/ironic
    api_port=$(free_port); nginx_port=$(free_port); sushy_port=$(free_port)
    local api="http://127.0.0.1:$api_port" www="http://127.0.0.1:$nginx_port"
    mkdir -p "$dir/httproot" "$dir/tftproot/master" "$dir/locks" "$WORK/nginx" \
        "$WORK/www/deploy"
    # Tiny deploy kernel and ramdisk: Ironic's ipxe boot caches them and writes iPXE config;
    # nothing boots them.
    head -c 4096 /dev/urandom >"$WORK/www/deploy/vmlinuz"
    head -c 4096 /dev/urandom >"$WORK/www/deploy/initramfs"
    ln -s "$dir/httproot" "$WORK/www/ironic"
    local sha
    sha=$(sha256sum "$WORK/www/images/sim-os.raw" | cut -d' ' -f1)

    cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    default_type application/octet-stream;
    client_body_temp_path $WORK/nginx/body;
    proxy_temp_path $WORK/nginx/proxy;
    fastcgi_temp_path $WORK/nginx/fastcgi;
    uwsgi_temp_path $WORK/nginx/uwsgi;
    scgi_temp_path $WORK/nginx/scgi;
    server {
        listen 127.0.0.1:$nginx_port;
        root $WORK/www;
        disable_symlinks off;
    }
}
EOF
    start "$WORK/nginx/stdout.log" "$NGINX" -e "$WORK/nginx/error.log" -p "$WORK/nginx" \
        -c "$WORK/nginx/nginx.conf"
    local nginx_pid=$LAST_PID
    wait_http "$www/deploy/vmlinuz"

    "$PY" "$HERE/ironic/drive.py" setup "$WORK/bmc" "$NODES" "http://127.0.0.1:$sushy_port"
    mkdir -p "$WORK/sushy-state"
    start "$WORK/sushy.log" env BENCH_SUSHY_STATE="$WORK/sushy-state" \
        "$PY" "$HERE/ironic/sushy_instant.py" --config "$WORK/bmc/sushy.conf" \
        -i 127.0.0.1 -p "$sushy_port"
    local sushy_pid=$LAST_PID
    wait_http "http://127.0.0.1:$sushy_port/redfish/v1/" -u "bench-admin:Bench-Redfish-S3cret"

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
debug = ${IRONIC_DEBUG:-false}

[api]
host_ip = 127.0.0.1
port = $api_port
max_limit = 10000
ramdisk_heartbeat_timeout = $HEARTBEAT_TIMEOUT

[database]
# SQLite's busy timeout 5 s -> 60 s, and Ironic's own retry of a locked database 10 s -> 60 s: on
# a 2-core machine shared with other work, 134 verifies otherwise fail with "database is locked"
# (an API read holding the lock while its thread waits for the CPU). Failures, not speed.
connection = sqlite:///$dir/ironic.sqlite?timeout=60
sqlite_max_wait_for_retry = 60

[conductor]
automated_clean = false
sync_power_state_interval = 0
# Generous: 134 nodes of pbkdf2-bound Redfish calls take many minutes here.
deploy_callback_timeout = 7200

[service_catalog]
# Standalone: the API URL the ramdisk is told (kernel command line of the iPXE config).
endpoint_override = $api

[agent]
# After the agent's power_off, Ironic polls the BMC's power state; the fake BMC applies it at once.
post_deploy_get_power_state_retry_interval = 1
image_download_source = http
# The agents' auto-TLS certificates (require_tls stays at its default, True).
certificates_path = $dir/certs

[dhcp]
dhcp_provider = none

[deploy]
http_url = $www/ironic
http_root = $dir/httproot

[pxe]
tftp_root = $dir/tftproot
tftp_master_path = $dir/tftproot/master

[oslo_concurrency]
lock_path = $dir/locks

[json_rpc]
auth_strategy = noauth
EOF
    "$VENV/bin/ironic-dbsync" --config-file "$dir/ironic.conf" create_schema \
        >"$dir/dbsync.log" 2>&1 || { cat "$dir/dbsync.log" >&2; return 1; }
    start "$dir/stdout.log" "$VENV/bin/ironic" --config-file "$dir/ironic.conf"
    local ironic_pid=$LAST_PID
    wait_http "$api/v1/nodes" || { tail -30 "$dir/ironic.log" "$dir/stdout.log" >&2; return 1; }
    for _ in $(seq 300); do
        curl -fsS -H 'X-OpenStack-Ironic-API-Version: latest' "$api/v1/conductors" 2>/dev/null \
            | grep -q '"alive": *true' && break
        sleep 0.1
    done
    start "$WORK/fake-ipa.stdout" "$PY" "$HERE/ironic/fake_ipa.py" --ironic "$api" \
        --nodes "$WORK/bmc/nodes.tsv" --stats "$WORK/fake-ipa.json" --log "$WORK/fake-ipa.log" \
        --tls-dir "$WORK/ipa-tls" --wait-signal
    local ipa_pid=$LAST_PID
    log "Ironic $IRONIC_VER (sushy-tools/sushy $SUSHY_VER): $NODES nodes, direct deploy," \
        "fake IPA, $CONCURRENCY requests in flight"
    "$PY" "$HERE/ironic/drive.py" deploy ironic --api "$api" --nodes "$WORK/bmc/nodes.tsv" \
        --deploy-kernel "$www/deploy/vmlinuz" --deploy-ramdisk "$www/deploy/initramfs" \
        --image-url "$www/images/sim-os.raw" --image-sha256 "$sha" \
        --pid "$ironic_pid" --rack-pid "$sushy_pid" --rack-pid "$ipa_pid" \
        --rack-pid "$nginx_pid" --ipa-pid "$ipa_pid" --concurrency "$CONCURRENCY" \
        --out "$WORK/ironic.json" \
        || { tail -40 "$dir/ironic.log" >&2; tail -20 "$WORK/fake-ipa.log" >&2; return 1; }
    stop "$ipa_pid"
    # The fake IPA must have seen only calls it knows, and verified every node's image.
    "$PY" - "$WORK/fake-ipa.json" "$NODES" <<'EOF'
import json, sys
stats, nodes = json.load(open(sys.argv[1])), int(sys.argv[2])
problems = []
if stats["unknown"]:
    problems.append(f"unknown calls: {stats['unknown'][:5]}")
for key in ("agents_started", "images_verified", "agents_powered_off"):
    if stats[key] != nodes:
        problems.append(f"{key} = {stats[key]}, not {nodes}")
if problems:
    sys.exit("fake IPA: " + "; ".join(problems))
print(f"fake IPA: {json.dumps(stats, sort_keys=True)}", file=sys.stderr)
EOF
    IPA_STATS=$(cat "$WORK/fake-ipa.json")
    # Where Ironic's deploy time went, per node, from its log.
    "$PY" "$HERE/ironic/drive.py" ironic-log "$dir/ironic.log" >"$WORK/ironic-breakdown.md"
    stop "$ironic_pid"
    stop "$sushy_pid"
    stop "$nginx_pid"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
run_kiln
run_ironic
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

{
    echo "Deploy: Kiln vs Ironic $IRONIC_VER (direct deploy, fake IPA, ramdisk_heartbeat_timeout" \
         "$HEARTBEAT_TIMEOUT; sushy-tools/sushy" \
         "$SUSHY_VER), $NODES nodes, $CONCURRENCY requests in flight, $(nproc) cores," \
         "$(date -u +%Y-%m-%dT%H:%MZ); load average $LOAD_BEFORE before, $LOAD_AFTER after;" \
         "image $IMAGE_BYTES bytes raw per node (Kiln serves it as $IMAGE_ZST_BYTES bytes of zstd)"
    echo
    "$PY" "$HERE/ironic/drive.py" deploy-table "$WORK/kiln.json" "$WORK/ironic.json"
    echo
    cat "$WORK/ironic-breakdown.md"
    echo
    echo "fake IPA counters: $("$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); d.pop("unknown"); print(json.dumps(d, sort_keys=True))' "$IPA_STATS")"
} | tee "$OUT"
cp "$WORK/kiln.json" "${OUT%.md}-kiln.json"
cp "$WORK/ironic.json" "${OUT%.md}-ironic.json"
