#!/bin/sh
# Entry point of Kiln's docker-in-docker test node (images/dind): makes the container look enough
# like a host for dockerd, then execs it. PID 1 is tini (see the image config), so orphaned shims
# are reaped and `docker stop` reaches dockerd.
#
# Environment:
#   KILN_REGISTRY         host:port of the lab's plain-HTTP registry (--insecure-registry)
#   KILN_STORAGE_DRIVER   force a storage driver (default: overlay2 if /var/lib/docker is not on
#                         overlayfs, else vfs)
#   KILN_DOCKERD_ARGS     extra dockerd arguments (split on spaces)
#
# Listeners: unix:///var/run/docker.sock always. With /etc/kiln-tls/{ca.pem,cert.pem,key.pem}
# present (bind-mounted), tcp://0.0.0.0:2376 with mutual TLS (--tlsverify) and NO plain port:
# dockerd applies its TLS settings to every TCP host, so 2375 and 2376 cannot coexist in one
# daemon. Without them, plain tcp://0.0.0.0:2375.
set -eu

log() { echo "kiln-dind: $*" >&2; }

# Docker mounts /sys read-only for unprivileged containers; dockerd writes there.
mount -o remount,rw /sys

# Fresh cgroup v1 hierarchies, one per line of /proc/self/cgroup ("ID:CONTROLLERS:PATH"). In a
# private cgroup namespace each one's root is this container's own cgroup, so the inner daemon's
# containers nest under the node and go away with it.
mount -t tmpfs -o mode=0755,nosuid,nodev,noexec cgroup /sys/fs/cgroup
while IFS=: read -r _ controllers _; do
    case "$controllers" in
    '') # the cgroup v2 line of a hybrid host
        mkdir -p /sys/fs/cgroup/unified
        mount -t cgroup2 -o nosuid,nodev,noexec cgroup2 /sys/fs/cgroup/unified 2>/dev/null ||
            rmdir /sys/fs/cgroup/unified
        ;;
    name=*)
        dir="${controllers#name=}"
        mkdir -p "/sys/fs/cgroup/$dir"
        mount -t cgroup -o "nosuid,nodev,noexec,none,$controllers" cgroup "/sys/fs/cgroup/$dir"
        ;;
    *)
        mkdir -p "/sys/fs/cgroup/$controllers"
        mount -t cgroup -o "nosuid,nodev,noexec,$controllers" cgroup "/sys/fs/cgroup/$controllers"
        # Co-mounted controllers ("cpu,cpuacct") are also reachable under each name.
        case "$controllers" in *,*)
            for c in $(echo "$controllers" | tr , ' '); do
                [ -e "/sys/fs/cgroup/$c" ] || ln -s "$controllers" "/sys/fs/cgroup/$c"
            done
            ;;
        esac
        ;;
    esac
done </proc/self/cgroup

# Inner containers may ask for shared or slave bind propagation.
mount --make-rshared /

# overlay2 cannot sit on overlayfs: /var/lib/docker should be a volume (the image declares one).
driver="${KILN_STORAGE_DRIVER:-}"
if [ -z "$driver" ]; then
    if [ "$(stat -f -c %T /var/lib/docker)" = overlayfs ]; then
        driver=vfs
    else
        driver=overlay2
    fi
fi

set -- dockerd --storage-driver="$driver" -H unix:///var/run/docker.sock
tls=/etc/kiln-tls
if [ -s "$tls/ca.pem" ] && [ -s "$tls/cert.pem" ] && [ -s "$tls/key.pem" ]; then
    set -- "$@" -H tcp://0.0.0.0:2376 --tlsverify \
        --tlscacert="$tls/ca.pem" --tlscert="$tls/cert.pem" --tlskey="$tls/key.pem"
else
    # An explicit --tls=false: without it dockerd 20.10 sleeps 15 s to warn about a plain TCP host.
    set -- "$@" -H tcp://0.0.0.0:2375 --tls=false
fi
[ -n "${KILN_REGISTRY:-}" ] && set -- "$@" --insecure-registry="$KILN_REGISTRY"
# shellcheck disable=SC2086 # word splitting is the documented contract
[ -n "${KILN_DOCKERD_ARGS:-}" ] && set -- "$@" $KILN_DOCKERD_ARGS
log "exec $*"
exec "$@"
