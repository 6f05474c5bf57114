#!/bin/bash
# Makes the Kolla-contract images available as `docker save` archives in one directory, named
# after the image (DIR/keystone.tar, ...), which is what `kiln services|deploy-servers
# --image-archives DIR` and `kiln lab demo` stream to nodes that lack an image:
#
#   images/kolla/export.sh DIR [NAME,NAME...]      (default: mariadb-server,memcached,keystone)
#
# build.sh imports into a Docker engine, so this starts a throwaway dockerd in a network
# namespace of its own (nothing on the host's network), runs build.sh (cached: loads the
# tarballs it kept), then links each image's cached tarball (found by the image's
# kiln.kolla.key label) into DIR. Everything it started is stopped and removed on exit.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: export.sh DIR [NAME,NAME...]}
names=${2:-mariadb-server,memcached,keystone}
cache=${KILN_IMAGES_CACHE:-/var/cache/kiln-images}/kolla
tag=${KOLLA_TAG:-zed-debian-bookworm}
DOCKER=/usr/bin/docker
[ "$(id -u)" = 0 ] || { echo "export.sh: run as root" >&2; exit 1; }
[ -x /usr/sbin/dockerd ] || { echo "export.sh: docker.io is not installed" >&2; exit 1; }

ns=kiln-kolla-export-$$
work=$(mktemp -d /var/tmp/kiln-kolla-export.XXXXXX)
exec_root=/run/kiln-kolla-export-$$
sock=$exec_root/docker.sock
export DOCKER_HOST=unix://$sock
dockerd_pid=
cleanup() {
    set +e
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$dockerd_pid" 2>/dev/null || true
    fi
    # containerd outlives a stopped dockerd when killed hard: anything naming our dirs goes.
    pkill -9 -f "$exec_root" 2>/dev/null || true
    { grep -o " $work[^ ]*\| $exec_root[^ ]*" /proc/mounts || true; } | sort -r |
        while read -r m; do umount -l "$m" 2>/dev/null; done
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$work" "$exec_root"
}
trap cleanup EXIT

ip netns add "$ns"
ip -n "$ns" link set lo up
mkdir -p "$work/docker" "$exec_root"
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
  "storage-driver": "overlay2"
}
EOF
# nsenter, not "ip netns exec" (which remounts /sys and breaks dockerd's cgroup mounts).
setsid nsenter --net="/run/netns/$ns" /usr/sbin/dockerd --config-file "$work/daemon.json" \
    >"$work/dockerd.log" 2>&1 </dev/null &
dockerd_pid=$!
for _ in $(seq 150); do
    "$DOCKER" version >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 20 "$work/dockerd.log" >&2; exit 1; }
    sleep 0.2
done
"$DOCKER" version >/dev/null

"$here/build.sh" --only "$names"
mkdir -p "$out"
IFS=, read -r -a list <<<"$names"
for name in "${list[@]}"; do
    key=$("$DOCKER" image inspect -f '{{index .Config.Labels "kiln.kolla.key"}}' "kolla/$name:$tag")
    tarball=$cache/$key/$name.tar
    [ -f "$tarball" ] || { echo "export.sh: $tarball missing after build.sh" >&2; exit 1; }
    ln -sfn "$tarball" "$out/$name.tar"
    echo "$out/$name.tar -> $tarball"
done
