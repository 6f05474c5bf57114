#!/bin/bash
# Smoke test of the Kolla-contract images (images/kolla/): an OpenStack identity + image slice.
#
#   images/kolla/smoke.sh [--all]
#
# Starts its own dockerd inside its own network namespace (never the host's network; no real
# interface is touched), loads or builds the images with build.sh, then does what a Kolla
# deployer does, with the configs from reference/ rendered into per-service directories that
# are bind-mounted read-only at /var/lib/kolla/config_files:
#   mariadb bootstrap -> mariadb, memcached, rabbitmq (healthchecks) -> databases and users
#   (kolla_db_create) -> keystone bootstrap -> keystone -> glance's Keystone user, service and
#   endpoints -> glance bootstrap (db_sync) -> glance-api -> "openstack token issue",
#   an image upload and "openstack image list" (python3-openstackclient in the keystone
#   container, so the host needs nothing but docker.io).
# --all adds the compute slice (the images build.sh makes with --all): placement-api, nova-api,
#   nova-conductor, nova-scheduler and nova-compute with nova's fake driver (no libvirt), then
#   "openstack compute service list" and a server booted without networks (there is no Neutron),
#   followed through its instance action until nova-compute reports the build a success.
# All containers use --network host (inside the namespace) and listen on 127.0.0.1, as Kolla
# does on the API address. Prints the time of every phase. Everything it started (containers,
# dockerd, the namespace, temporary directories) is removed on exit, also on failure.
# KEEP=1 leaves it all running for inspection (cleanup is then printed, not done).
# The engine's data-root is a tmpfs when enough memory is free (KILN_SMOKE_TMPFS=0: on disk).
# Runs as root. Host packages: docker.io, iproute2, util-linux (nsenter), plus build.sh's.
set -euo pipefail

all=0
case "${1:-}" in
--all) all=1 ;;
"") ;;
*) echo "usage: $0 [--all]" >&2; exit 2 ;;
esac
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER=/usr/bin/docker
tag="${KOLLA_TAG:-zed-debian-bookworm}"
ns="kiln-kolla-smoke-$$"
work="$(mktemp -d /var/tmp/kiln-kolla-smoke.XXXXXX)"
exec_root="/run/kiln-kolla-smoke-$$"
sock="$exec_root.sock"
export DOCKER_HOST="unix://$sock"
dockerd_pid=""

log() { echo "kolla-smoke: $*" >&2; }
die() {
    echo "kolla-smoke: FAILED: $*" >&2
    exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
t_all=$(now)
t_phase=$t_all
timings=()
phase_done() {
    local s
    s=$(since "$t_phase")
    timings+=("$(printf '%-34s %6s s' "$1" "$s")")
    log "phase $1: $s s"
    t_phase=$(now)
}
d() { "$DOCKER" "$@"; }

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ "${KEEP:-0}" = 1 ]; then
        log "KEEP=1: left running. DOCKER_HOST=$DOCKER_HOST; clean up with:"
        log "  kill $dockerd_pid; (wait for it to exit) findmnt -rn -o TARGET | grep -E '^($work|$exec_root)/' | sort -r | xargs -r umount;"
        log "  ip netns del $ns; rm -rf $work $exec_root $sock"
        exit "$status"
    fi
    local t_down
    t_down=$(now)
    if [ "$status" != 0 ] && [ -n "$dockerd_pid" ]; then
        for c in $(d ps -aq 2>/dev/null); do
            log "---- last log lines of $(d inspect -f '{{.Name}}' "$c" 2>/dev/null) ----"
            d logs --tail 25 "$c" 2>&1 | sed 's/^/    /' >&2 || true
        done
    fi
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        # shellcheck disable=SC2046
        d rm -f $(d ps -aq) >/dev/null 2>&1 || true
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$dockerd_pid" 2>/dev/null || true
    fi
    # dockerd unmounts its overlays on exit; anything left is unmounted before deleting.
    findmnt -rn -o TARGET | grep -E "^($work|$exec_root)/" | sort -r | while read -r m; do
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
    ip netns del "$ns" 2>/dev/null || true
    if findmnt -rn -o TARGET | grep -qE "^($work|$exec_root)/"; then
        log "mounts remain under $work or $exec_root; not deleting them"
    else
        rm -rf "$work" "$exec_root" "$sock"
    fi
    log "teardown: $(since "$t_down") s"
    if [ "$status" = 0 ]; then
        log "PASSED in $(since "$t_all") s"
    else
        log "FAILED (exit $status) after $(since "$t_all") s"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

[ "$(id -u)" = 0 ] || die "run as root"
if [ ! -x "$DOCKER" ] || [ ! -x /usr/sbin/dockerd ]; then
    die "docker.io is not installed (/usr/bin/docker, /usr/sbin/dockerd)"
fi

# --- our own engine in our own network namespace --------------------------------------------------
ip netns add "$ns"
ip -n "$ns" link set lo up
mkdir -p "$work/docker" "$exec_root"
# The engine's data on a tmpfs when there is memory for it: loading the images and deleting
# them afterwards is much faster than on a disk mounted with online discard.
mem_avail_mb=$(awk '/^MemAvailable:/ { print int($2 / 1024) }' /proc/meminfo)
need_mb=$([ "$all" = 1 ] && echo 12000 || echo 6000)
if [ "${KILN_SMOKE_TMPFS:-1}" = 1 ] && [ "$mem_avail_mb" -gt "$need_mb" ]; then
    mount -t tmpfs -o "size=$((need_mb / 2))m,mode=0711" kiln-kolla-smoke "$work/docker"
    log "dockerd data-root on a tmpfs ($((need_mb / 2)) MiB at most; $mem_avail_mb MiB available)"
fi
cat >"$work/daemon.json" <<EOF
{
  "data-root": "$work/docker",
  "exec-root": "$exec_root",
  "pidfile": "$exec_root/dockerd.pid",
  "hosts": ["$DOCKER_HOST"],
  "bridge": "none",
  "iptables": false,
  "ip6tables": false,
  "ip-forward": false,
  "ip-masq": false,
  "storage-driver": "overlay2",
  "log-driver": "json-file"
}
EOF
# nsenter, not "ip netns exec" (which remounts /sys and breaks dockerd's cgroup mounts).
setsid nsenter --net="/run/netns/$ns" /usr/sbin/dockerd --config-file "$work/daemon.json" \
    >"$work/dockerd.log" 2>&1 </dev/null &
dockerd_pid=$!
for _ in $(seq 150); do
    d version >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 20 "$work/dockerd.log" >&2; die "dockerd exited"; }
    sleep 0.2
done
d version >/dev/null 2>&1 || die "dockerd did not answer on $sock"
phase_done "dockerd in netns $ns"

# --- images ------------------------------------------------------------------------------------------
images=mariadb-server,rabbitmq,memcached,keystone,glance-api
[ "$all" = 1 ] && images="$images,placement-api,nova-api,nova-conductor,nova-scheduler,nova-compute"
"$here/build.sh" --only "$images"
phase_done "images (build.sh: load or build)"
t_slice=$(now)

# --- configuration: reference/ rendered per service -----------------------------------------------------
pw() { head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 20; }
ip=127.0.0.1
db_root_pw=$(pw)
keystone_db_pw=$(pw)
glance_db_pw=$(pw)
admin_pw=$(pw)
glance_ks_pw=$(pw)
rabbit_pw=$(pw)
placement_db_pw=$(pw)
placement_ks_pw=$(pw)
nova_db_pw=$(pw)
nova_ks_pw=$(pw)
declare -A V=(
    [api_interface_address]=$ip
    [database_address]=$ip
    [database_port]=3306
    [mariadb_port]=3306
    [mariadb_max_connections]=200
    [mariadb_innodb_buffer_pool_size]=64M
    [memcached_port]=11211
    [memcached_memory_mb]=64
    [memcached_servers]="$ip:11211"
    [rabbitmq_port]=5672
    [rabbitmq_cluster_port]=25672
    [rabbitmq_epmd_port]=4369
    [rabbitmq_hostname]=localhost
    [rabbitmq_user]=openstack
    [rabbitmq_password]=$rabbit_pw
    [rabbitmq_cluster_cookie]=$(pw)$(pw)
    [transport_url]="rabbit://openstack:$rabbit_pw@$ip:5672//"
    [keystone_public_port]=5000
    [keystone_api_workers]=2
    [keystone_database_password]=$keystone_db_pw
    [keystone_public_url]="http://$ip:5000"
    [keystone_internal_url]="http://$ip:5000"
    [glance_api_port]=9292
    [glance_api_workers]=1
    [glance_database_password]=$glance_db_pw
    [glance_keystone_password]=$glance_ks_pw
    [region_name]=RegionOne
    [placement_api_port]=8778
    [placement_api_workers]=1
    [placement_database_password]=$placement_db_pw
    [placement_keystone_password]=$placement_ks_pw
    [nova_host]=kiln-smoke
    [nova_api_port]=8774
    [nova_api_workers]=1
    [nova_conductor_workers]=1
    [nova_scheduler_workers]=1
    [nova_compute_driver]=fake.SmallFakeDriver
    [nova_database_password]=$nova_db_pw
    [nova_keystone_password]=$nova_ks_pw
)
# render SERVICE: reference/SERVICE/* (and reference/nova/nova.conf for the nova services) ->
# $work/config/SERVICE/*, every {{ name }} replaced.
render() {
    local svc=$1 f out k files
    mkdir -p "$work/config/$svc"
    files=("$here/reference/$svc"/*)
    case "$svc" in nova-*) files+=("$here/reference/nova/nova.conf") ;; esac
    for f in "${files[@]}"; do
        out="$work/config/$svc/$(basename "$f")"
        cp "$f" "$out"
        for k in "${!V[@]}"; do
            sed -i "s|{{ *$k *}}|${V[$k]}|g" "$out"
        done
        if grep -n '{{' "$out" >&2; then die "unrendered placeholder in $out"; fi
    done
    # The containers read it as their own users; the directory is mounted read-only.
    chmod -R a+rX "$work/config/$svc"
}
services=(mariadb rabbitmq memcached keystone glance-api)
[ "$all" = 1 ] && services+=(placement-api nova-api nova-conductor nova-scheduler nova-compute)
for svc in "${services[@]}"; do render "$svc"; done
cfg() { echo "-v $work/config/$1:/var/lib/kolla/config_files:ro"; }
common=(--network host -e KOLLA_CONFIG_STRATEGY=COPY_ALWAYS)

# wait_healthy NAME [TIMEOUT]: until docker reports the container healthy.
wait_healthy() {
    local name=$1 timeout=${2:-120} t0 state
    t0=$SECONDS
    while :; do
        state=$(d inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}' "$name")
        case "$state" in
        "running healthy") return 0 ;;
        running*) ;;
        *) die "$name is $state" ;;
        esac
        ((SECONDS - t0 < timeout)) || die "$name not healthy after ${timeout}s ($state)"
        sleep 0.3
    done
}
health=(--health-interval 1s --health-timeout 10s --health-retries 3)
phase_done "configs rendered"

# --- infrastructure: mariadb, memcached, rabbitmq -------------------------------------------------------
# shellcheck disable=SC2046
d run --rm --name mariadb_bootstrap "${common[@]}" $(cfg mariadb) -v mariadb:/var/lib/mysql \
    -e KOLLA_BOOTSTRAP= -e DB_ROOT_PASSWORD="$db_root_pw" "kolla/mariadb-server:$tag" >"$work/mariadb_bootstrap.log" 2>&1 ||
    { cat "$work/mariadb_bootstrap.log" >&2; die "mariadb bootstrap"; }
phase_done "mariadb bootstrap"
# shellcheck disable=SC2046
d run -d --name mariadb "${common[@]}" $(cfg mariadb) -v mariadb:/var/lib/mysql \
    --health-cmd "healthcheck_mariadb" "${health[@]}" "kolla/mariadb-server:$tag" >/dev/null
# shellcheck disable=SC2046
d run -d --name memcached "${common[@]}" $(cfg memcached) \
    --health-cmd "healthcheck_listen memcached 11211" "${health[@]}" "kolla/memcached:$tag" >/dev/null
# shellcheck disable=SC2046
d run -d --name rabbitmq "${common[@]}" $(cfg rabbitmq) -v rabbitmq:/var/lib/rabbitmq \
    --health-cmd "healthcheck_listen beam.smp 5672" "${health[@]}" "kolla/rabbitmq:$tag" >/dev/null
wait_healthy mariadb
phase_done "mariadb healthy"
wait_healthy memcached
wait_healthy rabbitmq
phase_done "memcached + rabbitmq healthy"

# --- databases (Kolla: kolla-toolbox mysql_db/mysql_user) -----------------------------------------------
declare -A db_pw=([keystone]=$keystone_db_pw [glance]=$glance_db_pw [placement]=$placement_db_pw [nova]=$nova_db_pw)
declare -A db_names=([keystone]=keystone [glance]=glance [placement]=placement [nova]="nova,nova_api,nova_cell0")
db_services=(keystone glance)
[ "$all" = 1 ] && db_services+=(placement nova)
for svc in "${db_services[@]}"; do
    d run --rm --network host -e DB_HOST=$ip -e DB_ROOT_PASSWORD="$db_root_pw" -e DB_NAME="${db_names[$svc]}" \
        -e DB_USER="$svc" -e DB_PASSWORD="${db_pw[$svc]}" "kolla/mariadb-server:$tag" kolla_db_create >&2 ||
        die "kolla_db_create $svc"
done
phase_done "databases created"

# --- keystone ------------------------------------------------------------------------------------------------
ks_vols=(-v keystone_fernet_tokens:/etc/keystone/fernet-keys -v keystone_credential_keys:/etc/keystone/credential-keys)
# shellcheck disable=SC2046
d run --rm --name keystone_bootstrap "${common[@]}" $(cfg keystone) "${ks_vols[@]}" \
    -e KOLLA_BOOTSTRAP= -e KEYSTONE_ADMIN_PASSWORD="$admin_pw" -e KEYSTONE_REGION_NAME=RegionOne \
    -e KEYSTONE_PUBLIC_URL="http://$ip:5000" -e KEYSTONE_INTERNAL_URL="http://$ip:5000" \
    -e KEYSTONE_ADMIN_URL="http://$ip:5000" "kolla/keystone:$tag" >"$work/keystone_bootstrap.log" 2>&1 ||
    { tail -n 40 "$work/keystone_bootstrap.log" >&2; die "keystone bootstrap"; }
phase_done "keystone bootstrap"
# shellcheck disable=SC2046
d run -d --name keystone "${common[@]}" $(cfg keystone) "${ks_vols[@]}" \
    --health-cmd "healthcheck_curl http://$ip:5000/v3" "${health[@]}" "kolla/keystone:$tag" >/dev/null
wait_healthy keystone
phase_done "keystone healthy"

os_env=(-e OS_AUTH_URL="http://$ip:5000/v3" -e OS_IDENTITY_API_VERSION=3 -e OS_USERNAME=admin
    -e OS_PASSWORD="$admin_pw" -e OS_PROJECT_NAME=admin -e OS_USER_DOMAIN_NAME=Default
    -e OS_PROJECT_DOMAIN_NAME=Default -e OS_REGION_NAME=RegionOne -e OS_INTERFACE=internal)
openstack() { d exec "${os_env[@]}" keystone openstack "$@"; }
openstack token issue -f value -c expires -c project_id >"$work/token.txt" || die "openstack token issue"
log "token issued: $(tr '\n' ' ' <"$work/token.txt")"
first_token=$(since "$t_slice")
phase_done "openstack token issue"

# --- glance ---------------------------------------------------------------------------------------------------
# What Kolla's service-ks-register role does: the service project, the service's user with the
# admin role in it, the service and its endpoints (one openstack CLI call each).
# ks_register USER PASSWORD SERVICE_NAME SERVICE_TYPE URL
ks_register() {
    # shellcheck disable=SC2016
    d exec "${os_env[@]}" -e KS_USER="$1" -e KS_PW="$2" -e KS_NAME="$3" -e KS_TYPE="$4" -e KS_URL="$5" \
        keystone sh -ec '
        openstack project create --or-show --domain default service -f value -c id >/dev/null
        openstack user create --or-show --domain default --password "$KS_PW" "$KS_USER" -f value -c id >/dev/null
        openstack role add --project service --user "$KS_USER" admin
        openstack service create --name "$KS_NAME" "$KS_TYPE" -f value -c id >/dev/null
        for i in public internal admin; do
            openstack endpoint create --region RegionOne "$KS_TYPE" $i "$KS_URL" -f value -c id >/dev/null
        done' || die "registering $3 in keystone"
}
ks_register glance "$glance_ks_pw" glance image "http://$ip:9292"
phase_done "glance registered in keystone"
# shellcheck disable=SC2046
d run --rm --name glance_api_bootstrap "${common[@]}" $(cfg glance-api) -v glance:/var/lib/glance \
    -e KOLLA_BOOTSTRAP= "kolla/glance-api:$tag" >"$work/glance_bootstrap.log" 2>&1 ||
    { tail -n 40 "$work/glance_bootstrap.log" >&2; die "glance bootstrap"; }
phase_done "glance bootstrap (db_sync)"
# shellcheck disable=SC2046
d run -d --name glance_api "${common[@]}" $(cfg glance-api) -v glance:/var/lib/glance \
    --health-cmd "healthcheck_curl http://$ip:9292" "${health[@]}" "kolla/glance-api:$tag" >/dev/null
wait_healthy glance_api
phase_done "glance-api healthy"

# --- the slice at work -------------------------------------------------------------------------------------
d exec keystone sh -c 'head -c 1048576 /dev/urandom >/tmp/smoke.img'
openstack image create --disk-format raw --container-format bare --file /tmp/smoke.img \
    kiln-smoke -f value -c id -c status >"$work/image.txt" || die "openstack image create"
log "image uploaded: $(tr '\n' ' ' <"$work/image.txt")"
openstack image list -f value -c Name -c Status >"$work/images.txt" || die "openstack image list"
log "image list: $(tr '\n' ' ' <"$work/images.txt")"
grep -q '^kiln-smoke active$' "$work/images.txt" || die "kiln-smoke is not active in the image list"
phase_done "image upload + image list"

# RabbitMQ: the openstack user authenticates (keystone and glance send no notifications: noop).
d exec rabbitmq rabbitmqctl -q authenticate_user openstack "$rabbit_pw" >/dev/null ||
    die "rabbitmq authenticate_user"
phase_done "rabbitmq user check"

# The contract's healthchecks, run once by hand as well.
d exec mariadb healthcheck_mariadb >/dev/null
d exec memcached healthcheck_listen memcached 11211 >/dev/null
d exec rabbitmq healthcheck_listen beam.smp 5672 >/dev/null
d exec keystone healthcheck_curl "http://$ip:5000/v3" >/dev/null
d exec glance_api healthcheck_curl "http://$ip:9292" >/dev/null
d exec glance_api healthcheck_port glance-api 3306 >/dev/null
! d exec memcached healthcheck_listen memcached 11299 >/dev/null || die "healthcheck_listen accepted a wrong port"
phase_done "healthchecks by hand"

# --- --all: the compute slice ------------------------------------------------------------------------------
if [ "$all" = 1 ]; then
    ks_register placement "$placement_ks_pw" placement placement "http://$ip:8778"
    ks_register nova "$nova_ks_pw" nova compute "http://$ip:8774/v2.1"
    phase_done "placement + nova registered"
    # shellcheck disable=SC2046
    d run --rm --name placement_api_bootstrap "${common[@]}" $(cfg placement-api) -e KOLLA_BOOTSTRAP= \
        "kolla/placement-api:$tag" >"$work/placement_bootstrap.log" 2>&1 ||
        { tail -n 40 "$work/placement_bootstrap.log" >&2; die "placement bootstrap"; }
    # shellcheck disable=SC2046
    d run -d --name placement_api "${common[@]}" $(cfg placement-api) \
        --health-cmd "healthcheck_curl http://$ip:8778" "${health[@]}" "kolla/placement-api:$tag" >/dev/null
    # shellcheck disable=SC2046
    d run --rm --name nova_api_bootstrap "${common[@]}" $(cfg nova-api) -e KOLLA_BOOTSTRAP= \
        "kolla/nova-api:$tag" >"$work/nova_bootstrap.log" 2>&1 ||
        { tail -n 40 "$work/nova_bootstrap.log" >&2; die "nova bootstrap"; }
    phase_done "placement + nova bootstrap"
    # shellcheck disable=SC2046
    d run -d --name nova_api "${common[@]}" $(cfg nova-api) \
        --health-cmd "healthcheck_curl http://$ip:8774" "${health[@]}" "kolla/nova-api:$tag" >/dev/null
    for svc in conductor scheduler; do
        # shellcheck disable=SC2046
        d run -d --name "nova_$svc" "${common[@]}" $(cfg "nova-$svc") \
            --health-cmd "healthcheck_port nova-$svc 5672" "${health[@]}" "kolla/nova-$svc:$tag" >/dev/null
    done
    # shellcheck disable=SC2046
    d run -d --name nova_compute "${common[@]}" $(cfg nova-compute) -v nova_compute:/var/lib/nova \
        --health-cmd "healthcheck_port nova-compute 5672" "${health[@]}" "kolla/nova-compute:$tag" >/dev/null
    for c in placement_api nova_api nova_conductor nova_scheduler nova_compute; do wait_healthy "$c" 180; done
    phase_done "placement + nova healthy"
    # Kolla's "discover hosts" step, once nova-compute has registered its service.
    for _ in $(seq 60); do
        d exec nova_conductor nova-manage cell_v2 discover_hosts --by-service >/dev/null 2>&1 &&
            openstack hypervisor list -f value -c 'Hypervisor Hostname' 2>/dev/null | grep -q . && break
        sleep 1
    done
    openstack compute service list -f value -c Binary -c Host -c State >"$work/services.txt" ||
        die "openstack compute service list"
    log "compute services: $(tr '\n' ';' <"$work/services.txt")"
    for b in nova-conductor nova-scheduler nova-compute; do
        grep -q "^$b kiln-smoke up$" "$work/services.txt" || die "$b is not up"
    done
    openstack hypervisor list -f value -c 'Hypervisor Hostname' -c State | grep -q . || die "no hypervisor"
    phase_done "compute services up, host discovered"
    # No Neutron here: the API's server views look up security groups in Neutron and fail, so
    # the server is created and followed through the compute API's instance actions instead of
    # "openstack server create --wait" (POST /servers with networks "none", microversion 2.37).
    openstack flavor create --vcpus 1 --ram 256 --disk 1 kiln.tiny -f value -c id >/dev/null
    d exec -i "${os_env[@]}" keystone python3 - <<'PY' || die "server boot"
import sys, time
import openstack
conn = openstack.connect()
flavor = conn.compute.find_flavor("kiln.tiny", ignore_missing=False)
image = conn.image.find_image("kiln-smoke", ignore_missing=False)
mv = {"OpenStack-API-Version": "compute 2.37"}
body = {"server": {"name": "kiln-smoke-vm", "flavorRef": flavor.id, "imageRef": image.id, "networks": "none"}}
r = conn.compute.post("/servers", json=body, headers=mv)
if r.status_code != 202:
    sys.exit("POST /servers: %s %s" % (r.status_code, r.text))
server_id = r.json()["server"]["id"]
request_id = r.headers["x-openstack-request-id"]
for _ in range(120):
    time.sleep(0.5)
    r = conn.compute.get("/servers/%s/os-instance-actions/%s" % (server_id, request_id), headers=mv)
    if r.status_code == 404:  # not in the cell database yet (still a build request)
        continue
    action = r.json()["instanceAction"]
    results = {e["event"]: e["result"] for e in action.get("events", [])}
    build = results.get("compute__do_build_and_run_instance")
    if build in ("Success", "Error"):
        print("kolla-smoke: server %s: %s" % (server_id, ", ".join("%s=%s" % kv for kv in sorted(results.items()))), file=sys.stderr)
        sys.exit(0 if build == "Success" else 1)
sys.exit("the build did not finish in 60 s")
PY
    phase_done "server boot (fake driver)"
fi

log "images and sizes:"
d images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | sort | sed 's/^/kolla-smoke:   /' >&2
log "memory (docker stats):"
d stats --no-stream --format '{{.Name}} {{.MemUsage}}' | sed 's/^/kolla-smoke:   /' >&2
log "timings:"
for line in "${timings[@]}"; do log "  $line"; done
log "  slice start (after images) to first token: $first_token s"
