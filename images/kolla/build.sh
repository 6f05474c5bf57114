#!/bin/bash
# Build Kiln's Kolla-contract container images offline from Debian bookworm packages:
#
#   images/kolla/build.sh [--only NAME[,NAME...]] [--all] [--push REGISTRY] [--force]
#
# Images (kolla/NAME:$KOLLA_TAG, default tag zed-debian-bookworm):
#   default: base mariadb-server rabbitmq memcached keystone glance-api
#   --all:   also placement-api nova-api nova-conductor nova-scheduler nova-compute haproxy keepalived
# --only builds/loads just the named images (their parents' root filesystems are still made).
# --push REGISTRY tags each image REGISTRY/kolla/NAME:TAG and pushes it.
#
# Method, per image directory (images/kolla/NAME/: image.conf, optional setup.sh and files/):
#   debootstrap --variant=minbase bookworm once (cached tarball) -> base rootfs (+ kolla_start,
#   kolla_set_configs, healthchecks, dumb-init, sudo, python3) -> per image a copy of the parent
#   rootfs, its users with Kolla's fixed uids, stub packages, "apt-get install
#   --no-install-recommends", files/, setup.sh, trimming -> tar | docker import with the
#   ENTRYPOINT/CMD/USER of the Kolla contract (see README.md).
#
# Cache: every image has a key, a hash of the recipe files it depends on (this script, base/,
# its parents' directories and its own, the mirror). Built images are kept as `docker save`
# tarballs in $KILN_IMAGES_CACHE/kolla/KEY/NAME.tar (default /var/cache/kiln-images/kolla), and
# parent root filesystems as KEY/NAME.rootfs.tar.zst. An image that the Docker engine already
# has with the same key (label kiln.kolla.key) is skipped; a cached tarball is `docker load`ed.
# .debs are kept in kolla/apt-archives. A flock on kolla/.lock serialises concurrent runs.
#
# Environment: DOCKER_HOST (the engine to import into; the caller runs dockerd), KOLLA_TAG,
# KILN_IMAGES_CACHE, KILN_DEBIAN_MIRROR / KILN_DEBIAN_SECURITY_MIRROR (default: read from
# /etc/apt/sources.list*), KILN_FORCE=1 (same as --force: rebuild even if cached). Runs as
# root (debootstrap, chroot, mount). Docker client: /usr/bin/docker (not the one on PATH).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DOCKER=/usr/bin/docker
suite=bookworm
tag="${KOLLA_TAG:-zed-debian-bookworm}"
cache_root="${KILN_IMAGES_CACHE:-/var/cache/kiln-images}"
cache="$cache_root/kolla"
force="${KILN_FORCE:-0}"
default_images=(base mariadb-server rabbitmq memcached keystone glance-api)
all_images=("${default_images[@]}" placement-api nova-api nova-conductor nova-scheduler nova-compute haproxy keepalived)

log() { echo "kolla-build: $*" >&2; }
die() {
    echo "kolla-build: error: $*" >&2
    exit 1
}
usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//' >&2
    exit "${1:-2}"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# --- arguments ------------------------------------------------------------------------------------
only=""
push=""
want_all=0
while [ $# -gt 0 ]; do
    case "$1" in
    --only) only="${2:?--only needs a list}"; shift 2 ;;
    --only=*) only="${1#--only=}"; shift ;;
    --push) push="${2:?--push needs a registry}"; shift 2 ;;
    --push=*) push="${1#--push=}"; shift ;;
    --all) want_all=1; shift ;;
    --force) force=1; shift ;;
    -h | --help) usage 0 ;;
    *) echo "kolla-build: unknown argument $1" >&2; usage ;;
    esac
done
if [ -n "$only" ]; then
    IFS=', ' read -r -a selected <<<"$only"
    for n in "${selected[@]}"; do
        [ -f "$here/$n/image.conf" ] || die "unknown image '$n' (no $here/$n/image.conf)"
        # shellcheck source=/dev/null
        . "$here/$n/image.conf"
        [ "$EXPORT" = yes ] || die "'$n' is internal (a parent root filesystem), not an image"
    done
elif [ "$want_all" = 1 ]; then
    selected=("${all_images[@]}")
else
    selected=("${default_images[@]}")
fi

[ "$(id -u)" = 0 ] || die "run as root (debootstrap, chroot, mount)"
for tool in debootstrap chroot mount umount findmnt zstd tar sha256sum awk flock dpkg-deb; do
    command -v "$tool" >/dev/null || die "$tool not found"
done
[ -x "$DOCKER" ] || die "$DOCKER not found (apt-get install docker.io)"
"$DOCKER" version --format '{{.Server.Version}}' >/dev/null 2>&1 ||
    die "no Docker engine at ${DOCKER_HOST:-the default socket} (start dockerd and set DOCKER_HOST)"

# --- mirrors: the ones apt is configured with (same parsing as images/os/build.sh) ---------------
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

# --- recipe keys ----------------------------------------------------------------------------------
# conf NAME: loads NAME/image.conf into PARENT EXPORT PACKAGES STUBS EXCLUDE USERS RUN_USER
# WORKDIR (see README.md).
conf() {
    PARENT="" EXPORT=yes PACKAGES="" STUBS="" EXCLUDE="" USERS="" RUN_USER=root WORKDIR=/
    [ -f "$here/$1/image.conf" ] || die "no recipe for '$1' ($here/$1/image.conf)"
    # shellcheck source=/dev/null
    . "$here/$1/image.conf"
}
# recipe_files DIR: the files of a recipe directory (editor backups and Python caches are not).
recipe_files() { (cd "$1" && find . -name __pycache__ -prune -o -type f ! -name '*~' ! -name '*.pyc' -print); }
hash_dir() { (cd "$here/$1" && recipe_files . | LC_ALL=C sort | tr '\n' '\0' | xargs -0 -r sha256sum | sha256sum | cut -c1-16); }
declare -A KEY=()
key_of() { # key_of NAME -> sets KEY[NAME] (recursively for the parents)
    local name=$1 parent
    [ -n "${KEY[$name]:-}" ] && return
    conf "$name"
    parent=$PARENT
    local parts
    parts="v1 $name $(hash_dir "$name") mirror=$mirror updates=$updates security=$security"
    if [ -n "$parent" ]; then
        key_of "$parent"
        parts="$parts parent=${KEY[$parent]}"
    else
        parts="$parts build.sh=$(sha256sum "$here/build.sh" | cut -c1-16) $(debootstrap --version)"
    fi
    KEY[$name]=$(echo "$parts" | sha256sum | cut -c1-16)
}
for n in "${selected[@]}"; do key_of "$n"; done

# --- the lock ------------------------------------------------------------------------------------
mkdir -p "$cache/apt-archives/partial" "$cache/apt-lists/partial"
exec 9>"$cache/.lock"
if ! flock -n 9; then
    log "another build holds $cache/.lock; waiting"
    flock 9
fi

t_total=$(now)
work=""
mounts=()
cleanup() {
    local i
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" 2>/dev/null || true
    done
    mounts=()
    rm -f "$cache"/*/*.tmp
    if [ -n "$work" ] && [ -d "$work" ]; then
        if findmnt -rn -o TARGET | grep -q "^$work/"; then
            log "mounts remain under $work; not deleting it"
        else
            rm -rf "$work"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

image_ref() { echo "kolla/$1:$tag"; }
docker_key() { "$DOCKER" image inspect -f '{{index .Config.Labels "kiln.kolla.key"}}' "$1" 2>/dev/null || true; }

# --- root filesystems -----------------------------------------------------------------------------
mount_in() { # mount_in ARGS... TARGET
    mkdir -p "${!#}"
    mount "$@"
    mounts+=("${!#}")
}
umount_root() { # unmounts everything under $1
    local i keep=()
    for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
        if [[ "${mounts[$i]}" == "$1"/* ]]; then
            umount "${mounts[$i]}" || umount -l "${mounts[$i]}"
        else
            keep=("${mounts[$i]}" "${keep[@]}")
        fi
    done
    mounts=("${keep[@]}")
}
in_root() { # in_root ROOT CMD...
    local root=$1
    shift
    chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive DEBCONF_NONINTERACTIVE_SEEN=true HOME=/root "$@"
}
apt_updated=0

debootstrap_tarball() { # sets ROOTFS_TAR to the cached debootstrap tarball, making it if needed
    local key tarball tmp
    key=$(echo "$suite minbase $mirror $(debootstrap --version)" | sha256sum | cut -c1-16)
    tarball="$cache/debootstrap-$suite-minbase-$key.tar.zst"
    if [ ! -s "$tarball" ]; then
        local t
        t=$(now)
        tmp="$work/debootstrap"
        mkdir -p "$tmp"
        log "debootstrap --variant=minbase $suite from $mirror"
        debootstrap --variant=minbase "$suite" "$tmp" "$mirror" >"$work/debootstrap.log" 2>&1 || {
            tail -n 30 "$work/debootstrap.log" >&2
            die "debootstrap failed (log above)"
        }
        rm -f "$tmp"/var/cache/apt/archives/*.deb
        find "$cache" -maxdepth 1 -name "debootstrap-$suite-minbase-*.tar.zst" ! -name "$(basename "$tarball")" -delete
        tar -C "$tmp" -c --numeric-owner --xattrs --xattrs-include='*' . | zstd -T0 -3 -q -o "$tarball.tmp"
        mv "$tarball.tmp" "$tarball"
        rm -rf "$tmp"
        log "  debootstrap: $(since "$t") s"
    fi
    ROOTFS_TAR=$tarball
}

# rootfs_tarball NAME: sets ROOTFS_TAR to the cached root filesystem tarball of a parent image,
# building the parent first if it is not there (or once per run with --force).
declare -A BUILT=()
rootfs_tarball() {
    local f="$cache/${KEY[$1]}/$1.rootfs.tar.zst"
    if [ ! -s "$f" ] || { [ "$force" = 1 ] && [ -z "${BUILT[$1]:-}" ]; }; then
        build_image "$1"
    fi
    ROOTFS_TAR=$f
}
# Images that are some image's PARENT keep their root filesystem as a tarball.
declare -A IS_PARENT=()
for f in "$here"/*/image.conf; do
    # shellcheck source=/dev/null disable=SC2030,SC2031
    p=$(PARENT="" && . "$f" && echo "$PARENT")
    [ -n "$p" ] && IS_PARENT[$p]=1
done

# make_stubs DIR NAMES...: empty packages that satisfy dependencies we do not want installed.
# The version is above any real one, so that apt never merges a stub with the mirror's
# package of the same version (and its dependencies). Exact-version dependencies cannot be
# met this way: use EXCLUDE for those.
make_stubs() {
    local dir=$1 name
    shift
    mkdir -p "$dir"
    for name in "$@"; do
        mkdir -p "$dir/$name/DEBIAN"
        cat >"$dir/$name/DEBIAN/control" <<EOF
Package: $name
Version: 9999:0+kiln.stub
Architecture: all
Multi-Arch: allowed
Maintainer: Kiln <root@localhost>
Priority: optional
Section: misc
Description: empty stand-in for $name (Kiln Kolla image)
 Installed in place of $name, which the image does not need at run time.
EOF
        dpkg-deb --root-owner-group -Zgzip -b "$dir/$name" "$dir/$name.deb" >/dev/null
    done
}

trim_root() { # trim_root ROOT: what no container needs
    local root=$1
    find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete 2>/dev/null || true
    find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
    rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian "$root"/usr/share/linda
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
    rm -f "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
    find "$root/var/log" -type f -delete 2>/dev/null || true
    rm -rf "$root"/tmp/* "$root"/var/tmp/* "$root"/root/.cache "$root"/run/adduser
    # Docker bind-mounts its own over these; the build host's must not stay in the image.
    : >"$root/etc/resolv.conf"
    echo localhost >"$root/etc/hostname"
}

# build_image NAME: builds NAME's root filesystem; saves it as a tarball when EXPORT=no or when
# it is a parent, imports and saves the Docker image when EXPORT=yes.
build_image() {
    local name=$1 key t root stubdir u uname uid uhome f mode
    key=${KEY[$name]}
    conf "$name"
    # shellcheck disable=SC2031
    local parent=$PARENT export=$EXPORT packages=$PACKAGES stubs=$STUBS exclude=$EXCLUDE users=$USERS
    local run_user=$RUN_USER workdir=$WORKDIR
    t=$(now)
    log "building $name (key $key)"
    root="$work/$name"
    rm -rf "$root"
    mkdir -p "$root"
    if [ -n "$parent" ]; then
        key_of "$parent"
        rootfs_tarball "$parent"
    else
        debootstrap_tarball
    fi
    zstd -dc -q "$ROOTFS_TAR" | tar -x -C "$root" --numeric-owner --xattrs --xattrs-include='*' -p

    mount_in -t proc proc "$root/proc"
    mount_in -t tmpfs -o mode=1777 tmpfs "$root/tmp"
    mount_in --bind "$cache/apt-archives" "$root/var/cache/apt/archives"
    mount_in --bind "$cache/apt-lists" "$root/var/lib/apt/lists"
    cp -L /etc/resolv.conf "$root/etc/resolv.conf"

    if [ -z "$parent" ]; then
        {
            echo "deb $mirror $suite main"
            [ -n "$updates" ] && echo "deb $updates $suite-updates main"
            [ -n "$security" ] && echo "deb $security $suite-security main"
        } >"$root/etc/apt/sources.list"
        rm -f "$root"/etc/apt/sources.list.d/*
        # Build-time apt settings (snapshot mirrors may be past Valid-Until; fast unpacking).
        printf '%s\n' 'Acquire::Check-Valid-Until "false";' 'Dpkg::Use-Pty "false";' \
            'Dpkg::Options { "--force-unsafe-io"; };' >"$root/etc/apt/apt.conf.d/99kiln-build"
        printf '#!/bin/sh\n# Kiln Kolla image: maintainer scripts start no services.\nexit 101\n' \
            >"$root/usr/sbin/policy-rc.d"
        chmod 0755 "$root/usr/sbin/policy-rc.d"
        install -D -m 0644 "$here/base/files/etc/dpkg/dpkg.cfg.d/kolla-nodoc" "$root/etc/dpkg/dpkg.cfg.d/kolla-nodoc"
        in_root "$root" groupadd -g 42400 kolla
    fi
    in_root "$root" debconf-set-selections <"$here/base/preseed"

    # Users first, with Kolla's uids, so the packages' maintainer scripts adopt them.
    for u in $users; do
        IFS=: read -r uname uid uhome <<<"$u"
        if ! in_root "$root" getent passwd "$uname" >/dev/null; then
            in_root "$root" groupadd -g "$uid" "$uname"
            in_root "$root" useradd -u "$uid" -g "$uid" -G kolla -d "$uhome" -M -s /usr/sbin/nologin "$uname"
        fi
    done

    # EXCLUDE: paths dpkg does not unpack (the packages count as installed; children inherit it).
    if [ -n "$exclude" ]; then
        local -a paths
        read -r -a paths <<<"$exclude" # no glob expansion on the host
        {
            echo "# Kiln Kolla image $name: not unpacked (see images/kolla/$name/image.conf)."
            printf 'path-exclude=%s\n' "${paths[@]}"
        } >"$root/etc/dpkg/dpkg.cfg.d/kolla-exclude-$name"
    fi
    if [ "$apt_updated" = 0 ]; then
        in_root "$root" apt-get -q update >"$work/apt-update.log" 2>&1 || {
            tail -n 20 "$work/apt-update.log" >&2
            die "apt-get update failed"
        }
        apt_updated=1
    fi
    if [ -n "$stubs" ]; then
        stubdir="$root/tmp/stubs"
        # shellcheck disable=SC2086
        make_stubs "$stubdir" $stubs
        in_root "$root" sh -c 'dpkg -i /tmp/stubs/*.deb' >"$work/$name-stubs.log" 2>&1 || {
            cat "$work/$name-stubs.log" >&2
            die "$name: installing stub packages failed"
        }
    fi
    if [ -z "$parent" ]; then
        in_root "$root" apt-get -q -y dist-upgrade >"$work/$name-apt.log" 2>&1 || {
            tail -n 30 "$work/$name-apt.log" >&2
            die "$name: apt-get dist-upgrade failed"
        }
    fi
    # shellcheck disable=SC2086
    in_root "$root" apt-get -q -y --no-install-recommends install $packages >>"$work/$name-apt.log" 2>&1 || {
        tail -n 40 "$work/$name-apt.log" >&2
        die "$name: apt-get install failed"
    }
    log "  $name: packages installed ($(since "$t") s)"

    # files/: copied as they are (0755 if executable in the repository, else 0644; sudoers 0440).
    if [ -d "$here/$name/files" ]; then
        recipe_files "$here/$name/files" | while read -r f; do
            f=${f#./}
            if [ -x "$here/$name/files/$f" ]; then mode=0755; else mode=0644; fi
            case "$f" in etc/sudoers.d/*) mode=0440 ;; esac
            install -D -m "$mode" -o root -g root "$here/$name/files/$f" "$root/$f"
        done
    fi
    if [ -x "$here/$name/setup.sh" ]; then
        cp "$here/$name/setup.sh" "$root/tmp/setup.sh"
        in_root "$root" /tmp/setup.sh >"$work/$name-setup.log" 2>&1 || {
            cat "$work/$name-setup.log" >&2
            die "$name: setup.sh failed"
        }
    fi
    # shellcheck disable=SC2016
    in_root "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$work/$name.packages"

    umount_root "$root"
    trim_root "$root"
    mkdir -p "$cache/$key"

    if [ "$export" != yes ] || [ -n "${IS_PARENT[$name]:-}" ]; then
        tar -C "$root" -c --numeric-owner --xattrs --xattrs-include='*' . |
            zstd -T0 -3 -q -o "$cache/$key/$name.rootfs.tar.zst.tmp"
        mv "$cache/$key/$name.rootfs.tar.zst.tmp" "$cache/$key/$name.rootfs.tar.zst"
    fi
    cp "$work/$name.packages" "$cache/$key/$name.packages"
    if [ "$export" = yes ]; then
        local ref changes=()
        ref=$(image_ref "$name")
        changes=(
            --change 'ENTRYPOINT ["dumb-init", "--single-child", "--"]'
            --change 'CMD ["kolla_start"]'
            --change "USER $run_user"
            --change "WORKDIR $workdir"
            --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'
            --change 'ENV LANG=C.UTF-8'
            --change 'ENV KOLLA_BASE_DISTRO=debian KOLLA_INSTALL_TYPE=binary KOLLA_BASE_ARCH=x86_64'
            --change "LABEL kiln.kolla.key=$key kiln.kolla.image=$name kiln.kolla.suite=$suite"
        )
        tar -C "$root" -c --numeric-owner --xattrs --xattrs-include='*' . |
            "$DOCKER" import "${changes[@]}" - "$ref" >/dev/null
        "$DOCKER" save -o "$cache/$key/$name.tar.tmp" "$ref"
        mv "$cache/$key/$name.tar.tmp" "$cache/$key/$name.tar"
        log "  $name: imported as $ref, saved to $cache/$key/$name.tar"
    fi
    rm -rf "$root"
    BUILT[$name]=1
    # Older cache entries of this image go.
    find "$cache" -mindepth 2 -maxdepth 2 \( -name "$name.tar" -o -name "$name.rootfs.tar.zst" -o -name "$name.packages" \) \
        ! -path "$cache/$key/*" -delete
    find "$cache" -mindepth 1 -maxdepth 1 -type d -empty -delete
    log "  $name: built in $(since "$t") s"
}

# --- main ---------------------------------------------------------------------------------------
# load_image NAME: docker load of the cached tarball (run in the background: loads of several
# images in parallel take about half the time of one after the other).
load_image() {
    local name=$1 ref tar_file t loaded
    ref=$(image_ref "$name")
    tar_file="$cache/${KEY[$name]}/$name.tar"
    t=$(now)
    loaded=$("$DOCKER" load -i "$tar_file" | sed -n 's/^Loaded image: //p' | head -n1)
    [ -n "$loaded" ] || die "docker load of $tar_file loaded no image"
    [ "$loaded" = "$ref" ] || "$DOCKER" tag "$loaded" "$ref"
    log "$ref: loaded from $tar_file in $(since "$t") s"
}

work="$(mktemp -d /var/tmp/kiln-kolla-build.XXXXXX)"
to_build=()
declare -A loading=()
for name in "${selected[@]}"; do
    key=${KEY[$name]}
    ref=$(image_ref "$name")
    if [ "$force" != 1 ] && [ "$(docker_key "$ref")" = "$key" ]; then
        log "$ref: up to date in the engine (key $key)"
    elif [ "$force" != 1 ] && [ -s "$cache/$key/$name.tar" ]; then
        load_image "$name" &
        loading[$name]=$!
    else
        to_build+=("$name")
    fi
done
for name in "${to_build[@]}"; do
    [ -n "${BUILT[$name]:-}" ] || build_image "$name"
done
for name in "${!loading[@]}"; do
    wait "${loading[$name]}" || die "loading $(image_ref "$name") failed"
done
if [ -n "$push" ]; then
    for name in "${selected[@]}"; do
        ref=$(image_ref "$name")
        "$DOCKER" tag "$ref" "$push/$ref"
        "$DOCKER" push "$push/$ref" >/dev/null
        log "pushed $push/$ref"
    done
fi
log "done in $(since "$t_total") s:"
for name in "${selected[@]}"; do
    "$DOCKER" image inspect -f "{{.Size}} $(image_ref "$name")" "$(image_ref "$name")" |
        awk '{ printf "kolla-build:   %-45s %5.0f MB\n", $2, $1 / 1e6 }' >&2
done
