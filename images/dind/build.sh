#!/bin/bash
# Build the images for Kiln's multi-host Docker tests (tests/common/docker_lab.rs), offline from
# Debian 12 packages:
#
#   images/dind/build.sh [OUT_TAR]
#
# - kiln-test/dind:1 — a docker-in-docker "node": debootstrap minbase bookworm + docker.io,
#   iproute2, ca-certificates and entry.sh (remounts /sys, mounts fresh cgroup v1 hierarchies,
#   execs dockerd on unix:///var/run/docker.sock plus tcp 2375, or TLS-only 2376 when
#   /etc/kiln-tls holds certificates). /var/lib/docker is a declared volume.
# - kiln-test/busybox:1 — FROM scratch + Debian's busybox-static and its applet links (~2 MB).
#
# Both are written as `docker save` tarballs assembled by hand (manifest.json, config, one layer
# each), so the build needs no Docker daemon. Cache directory: /var/cache/kiln-images/dind/HASH/
# with images.tar (both images) and busybox.tar; HASH covers every file under images/dind/, the
# mirrors and the debootstrap version. Prints the path of images.tar on stdout; with OUT_TAR,
# also links (or copies) images.tar there. Concurrent runs wait on a lock and the second one finds
# the cache filled. The debootstrap tarball is shared with images/os (same cache key).
#
# Environment: KILN_IMAGES_CACHE (default /var/cache/kiln-images), KILN_DEBIAN_MIRROR and
# KILN_DEBIAN_SECURITY_MIRROR (default: read from /etc/apt/sources.list*), KILN_FORCE=1 rebuilds.
# Runs as root (debootstrap, chroot).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -gt 1 ]; then
    echo "usage: $0 [OUT_TAR]" >&2
    exit 2
fi
out_tar="${1:-}"
suite=bookworm
cache="${KILN_IMAGES_CACHE:-/var/cache/kiln-images}"
node_tag=kiln-test/dind:1
busybox_tag=kiln-test/busybox:1
packages=(docker.io iproute2 ca-certificates)

log() { echo "dind-image: $*" >&2; }
die() {
    echo "dind-image: error: $*" >&2
    exit 1
}
t_start=$(date +%s.%N)
t_phase=$t_start
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
phase_done() {
    log "phase $1: $(since "$t_phase") s"
    t_phase=$(date +%s.%N)
}

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mount)"
for tool in debootstrap chroot mount umount findmnt flock zstd tar sha256sum awk dpkg-deb; do
    command -v "$tool" >/dev/null || die "$tool not found (apt-get install debootstrap zstd)"
done

# --- mirrors: the ones apt is configured with (as in images/os/build.sh) -----------------------------
# Prints "URI SUITE" for every deb source in sources.list and sources.list.d (one-line and deb822).
apt_sources() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -r "$f" ] || continue
        awk '$1 == "deb" { i = 2; if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } print $i, $(i + 1) }' "$f"
    done
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -r "$f" ] || continue
        awk 'BEGIN { RS = "" }
            {
                types = ""; uris = ""; suites = ""; enabled = "yes"
                n = split($0, lines, "\n")
                for (i = 1; i <= n; i++) {
                    l = lines[i]
                    if (l ~ /^#/) continue
                    if (l ~ /^Types:/) { sub(/^Types:[ \t]*/, "", l); types = l }
                    if (l ~ /^URIs:/) { sub(/^URIs:[ \t]*/, "", l); uris = l }
                    if (l ~ /^Suites:/) { sub(/^Suites:[ \t]*/, "", l); suites = l }
                    if (l ~ /^Enabled:/) { sub(/^Enabled:[ \t]*/, "", l); enabled = l }
                }
                if (enabled == "no" || (" " types " ") !~ / deb /) next
                nu = split(uris, u, " "); ns = split(suites, s, " ")
                for (a = 1; a <= nu; a++) for (b = 1; b <= ns; b++) print u[a], s[b]
            }' "$f"
    done
}
sources="$(apt_sources)"
mirror="${KILN_DEBIAN_MIRROR:-$(awk -v s="$suite" '$2 == s { print $1; exit }' <<<"$sources")}"
security="${KILN_DEBIAN_SECURITY_MIRROR:-$(awk -v s="$suite-security" '$2 == s { print $1; exit }' <<<"$sources")}"
updates="$(awk -v s="$suite-updates" '$2 == s { print $1; exit }' <<<"$sources")"
[ -n "$mirror" ] || die "no '$suite' source in /etc/apt/sources.list*; set KILN_DEBIAN_MIRROR"
[ -n "${KILN_DEBIAN_MIRROR:-}" ] && updates="$mirror"
mirror="${mirror%/}"
security="${security%/}"
updates="${updates%/}"

# --- the cache check (under a lock: parallel tests call this at the same time) -----------------------
recipe_hash="$(
    {
        (cd "$here" && find . -type f ! -name '*~' ! -name '*.md' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        echo "mirror $mirror updates $updates security $security suite $suite"
        debootstrap --version
    } | sha256sum | cut -c1-16
)"
mkdir -p "$cache/dind"
exec 9>"$cache/dind/.lock"
flock 9
dir="$cache/dind/$recipe_hash"

publish() { # prints the result and links it to OUT_TAR
    if [ -n "$out_tar" ]; then
        rm -f "$out_tar"
        ln "$dir/images.tar" "$out_tar" 2>/dev/null || cp "$dir/images.tar" "$out_tar"
    fi
    echo "$dir/images.tar"
}
if [ "${KILN_FORCE:-0}" != 1 ] && [ -s "$dir/images.tar" ] && [ -s "$dir/busybox.tar" ]; then
    log "up to date: $dir (recipe $recipe_hash)"
    publish
    exit 0
fi
log "building $node_tag and $busybox_tag into $dir (mirror $mirror)"

mkdir -p "$cache/dind/apt-archives/partial"
work="$(mktemp -d /var/tmp/kiln-dind.XXXXXX)"
root="$work/root"
mkdir -p "$root"

mounts=()
mount_in() { # mount_in ARGS... TARGET (the target is recorded for unmounting)
    mkdir -p "${!#}"
    mount "$@"
    mounts+=("${!#}")
}
unmount_all() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" 2>/dev/null || true
    done
    mounts=()
}
cleanup() {
    unmount_all
    # Never delete through a mount point that is still there (the apt cache).
    if findmnt -rn -o TARGET | grep -q "^$work/"; then
        log "mounts remain under $work; not deleting it"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
in_root() {
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LC_ALL=C.UTF-8 \
        DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true HOME=/root "$@"
}
apt_in_root() { # apt-get in the chroot, its output in apt.log (tail shown on failure)
    in_root apt-get -q -y "$@" >>"$work/apt.log" 2>&1 || {
        tail -n 30 "$work/apt.log" >&2
        die "apt-get $1 failed"
    }
}

# --- phase 1: debootstrap (the tarball cache of images/os/build.sh: same key, same file) ---------------
db_key="$(echo "$suite minbase $mirror $(debootstrap --version)" | sha256sum | cut -c1-16)"
tarball="$cache/debootstrap-$suite-minbase-$db_key.tar.zst"
if [ -s "$tarball" ]; then
    zstd -dc -q "$tarball" | tar -x -C "$root" --numeric-owner --xattrs --xattrs-include='*' -p
    phase_done "debootstrap (from $tarball)"
else
    debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
        tail -n 30 "$work/debootstrap.log" >&2
        die "debootstrap failed (log above)"
    }
    rm -f "$root"/var/cache/apt/archives/*.deb
    tar -C "$root" -c --numeric-owner --xattrs --xattrs-include='*' . | zstd -T0 -3 -q -o "$tarball.tmp.$$"
    mv "$tarball.tmp.$$" "$tarball"
    phase_done "debootstrap (downloaded; cached as $tarball)"
fi

# --- phase 2: packages ----------------------------------------------------------------------------------
mount_in -t proc proc "$root/proc"
mount_in -t tmpfs -o mode=0755 tmpfs "$root/run"
mount_in -t tmpfs -o mode=1777 tmpfs "$root/tmp"
# Own archive directory, not images/os's: two apt runs on one archive directory fight over its lock.
mount_in --bind "$cache/dind/apt-archives" "$root/var/cache/apt/archives"

{
    echo "deb $mirror $suite main"
    [ -n "$updates" ] && echo "deb $updates $suite-updates main"
    [ -n "$security" ] && echo "deb $security $suite-security main"
} >"$root/etc/apt/sources.list"
rm -f "$root"/etc/apt/sources.list.d/*
rm -f "$root/etc/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cat >"$root/etc/apt/apt.conf.d/99kiln-build" <<'EOF'
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
APT::Install-Recommends "false";
Dpkg::Use-Pty "false";
Dpkg::Options { "--force-unsafe-io"; "--force-confold"; };
EOF
cat >"$root/etc/dpkg/dpkg.cfg.d/kiln-nodoc" <<'EOF'
path-exclude=/usr/share/doc/*
path-include=/usr/share/doc/*/copyright
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-include=/usr/share/locale/locale.alias
EOF
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

apt_in_root update
apt_in_root dist-upgrade
apt_in_root install --no-install-recommends "${packages[@]}"
in_root sh -c 'cd /tmp && apt-get -q download busybox-static' >>"$work/apt.log" 2>&1 ||
    die "apt-get download busybox-static failed"
mv "$root"/tmp/busybox-static_*.deb "$work/"
apt_in_root autoclean
# shellcheck disable=SC2016 # ${Version} is dpkg-query's field, not a shell variable
docker_version="$(in_root dpkg-query -W -f '${Version}' docker.io)"
phase_done "packages (docker.io $docker_version; $(grep -c '^Setting up' "$work/apt.log") set up)"

# --- phase 3: the node's root filesystem ------------------------------------------------------------------
unmount_all
install -D -m 0755 "$here/entry.sh" "$root/usr/local/sbin/kiln-dind-entry"
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/apt/apt.conf.d/99kiln-build"
: >"$root/etc/resolv.conf" # Docker bind-mounts its own
echo node >"$root/etc/hostname"
# Trim: docs, manual pages, translations, apt lists and caches, logs; device nodes (Docker gives
# the container its own /dev).
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/*
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*
mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
rm -f "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/etc/*-
find "$root/var/log" -type f -delete
# Tools a node does not run: the libnetwork test tools, the v1 shims (dockerd uses runc.v2), ctr.
rm -f "$root"/usr/bin/{dnet,ctr,containerd-stress,containerd-shim,containerd-shim-runc-v1} "$root/usr/sbin/ovrouter"
rm -rf "${root:?}"/dev/* "$root"/tmp/* "$root"/var/tmp/* "$root"/var/lib/docker/* "$root"/var/lib/containerd/*
phase_done "node rootfs ($(du -sm "$root" | cut -f1) MiB)"

# --- phase 4: the busybox root filesystem ---------------------------------------------------------------------
bb="$work/busybox"
dpkg-deb -x "$work"/busybox-static_*.deb "$work/busybox-deb"
mkdir -p "$bb/bin" "$bb/etc" "$bb/root" "$bb/tmp" "$bb/proc" "$bb/sys" "$bb/dev"
chmod 1777 "$bb/tmp"
install -m 0755 "$work/busybox-deb/bin/busybox" "$bb/bin/busybox"
"$bb/bin/busybox" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    mkdir -p "$bb/$(dirname "$applet")"
    ln -sf /bin/busybox "$bb/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$bb/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$bb/etc/group"
phase_done "busybox rootfs ($(du -sk "$bb" | cut -f1) KiB)"

# --- phase 5: docker-save tarballs ------------------------------------------------------------------------------
# The format `docker load` reads: manifest.json listing, per image, a config JSON named by its
# sha256 and its layer tarballs; a layer's sha256 is the config's rootfs diff_id.
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
make_layer() { # make_layer ROOTFS → prints the layer's sha256; the layer is $work/layers/SHA/layer.tar
    local tmp="$work/layers/tmp.tar" sha
    mkdir -p "$work/layers"
    tar -C "$1" --numeric-owner --sort=name -cf "$tmp" .
    sha="$(sha256sum "$tmp" | cut -d' ' -f1)"
    mkdir -p "$work/layers/$sha"
    mv "$tmp" "$work/layers/$sha/layer.tar"
    echo "$sha"
}
make_config() { # make_config LAYER_SHA CONFIG_JSON → prints the config's sha256; file $work/layers/SHA.json
    local json sha
    json="{\"architecture\":\"amd64\",\"os\":\"linux\",\"created\":\"$created\",\"config\":$2,"
    json+="\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"sha256:$1\"]},"
    json+="\"history\":[{\"created\":\"$created\",\"created_by\":\"images/dind/build.sh $recipe_hash\"}]}"
    sha="$(printf '%s' "$json" | sha256sum | cut -d' ' -f1)"
    printf '%s' "$json" >"$work/layers/$sha.json"
    echo "$sha"
}
save() { # save OUT_TAR TAG CONFIG_SHA LAYER_SHA [TAG CONFIG_SHA LAYER_SHA]...
    local out="$1" manifest="" save_dir="$work/save"
    shift
    rm -rf "$save_dir"
    mkdir -p "$save_dir"
    while [ $# -ge 3 ]; do
        ln "$work/layers/$2.json" "$save_dir/$2.json"
        mkdir -p "$save_dir/$3"
        ln "$work/layers/$3/layer.tar" "$save_dir/$3/layer.tar"
        manifest+="${manifest:+,}{\"Config\":\"$2.json\",\"RepoTags\":[\"$1\"],\"Layers\":[\"$3/layer.tar\"]}"
        shift 3
    done
    printf '[%s]\n' "$manifest" >"$save_dir/manifest.json"
    (cd "$save_dir" && tar --numeric-owner -cf "$out" -- *)
}
path_env='"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]'
node_layer="$(make_layer "$root")"
# tini as PID 1 reaps orphaned shims and forwards SIGTERM; /var/lib/docker is a volume because
# overlay2 cannot sit on the container's own overlayfs root.
node_config="$(make_config "$node_layer" "{$path_env,
    \"Entrypoint\":[\"/usr/bin/tini\",\"-g\",\"--\",\"/usr/local/sbin/kiln-dind-entry\"],
    \"Volumes\":{\"/var/lib/docker\":{}},\"StopSignal\":\"SIGTERM\",
    \"Labels\":{\"org.kiln.recipe\":\"$recipe_hash\"}}")"
bb_layer="$(make_layer "$bb")"
bb_config="$(make_config "$bb_layer" "{$path_env,\"Cmd\":[\"sh\"]}")"
rm -rf "$root"

rm -rf "$dir.tmp"
mkdir -p "$dir.tmp"
save "$dir.tmp/busybox.tar" "$busybox_tag" "$bb_config" "$bb_layer"
save "$dir.tmp/images.tar" "$node_tag" "$node_config" "$node_layer" "$busybox_tag" "$bb_config" "$bb_layer"
printf 'recipe %s\nmirror %s\n%s %s\n%s %s\n' "$recipe_hash" "$mirror" \
    "$node_tag" "$node_config" "$busybox_tag" "$bb_config" >"$dir.tmp/inputs.txt"
rm -rf "$dir"
mv "$dir.tmp" "$dir"
# Older recipes' outputs go; the shared .lock and apt-archives stay.
for old in "$cache"/dind/*/; do
    old="${old%/}"
    case "$old" in "$dir" | */apt-archives) ;; *) rm -rf "$old" ;; esac
done
phase_done "save ($(du -m "$dir/images.tar" | cut -f1) MiB images.tar, $(du -k "$dir/busybox.tar" | cut -f1) KiB busybox.tar)"
log "done in $(since "$t_start") s"
publish
