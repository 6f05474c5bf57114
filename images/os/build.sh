#!/bin/bash
# Build Kiln's Debian 12 (bookworm) OS image, offline from Debian packages:
#
#   images/os/build.sh OUT_DIR [--name NAME --preload ARCHIVE_DIR]
#
# Writes OUT_DIR/debian-12.raw.zst (zstd -3 of a raw disk image: msdos label, p1 64 MiB FAT32
# ESP, p2 ext4 root; GRUB for BIOS and UEFI), OUT_DIR/debian-12.raw.zst.sha256 and
# OUT_DIR/debian-12.json (Kiln's image record). See images/README.md for the config-drive
# contract (kiln-firstboot) and what is in the image.
#
# --preload ARCHIVE_DIR (with --name, e.g. debian-12-kolla): every `docker save` archive in
# ARCHIVE_DIR (*.tar, the directory `kiln deploy-servers --image-archives` takes) is loaded into
# the image's /var/lib/docker at build time, by a throwaway dockerd on this machine (in a network
# namespace of its own), so nodes boot with those images present: the deployer finds each one by
# its content ID and only tags it, instead of streaming it to the node for that node's dockerd
# to unpack (the slow part on small or emulated machines). The outputs are then NAME.raw.zst,
# NAME.raw.zst.sha256 and NAME.json, and the archives' content is part of the cache key.
#
# Caching: the build is skipped when OUT_DIR holds outputs built from the same recipe (every file
# under images/os/, the mirrors, the size). The debootstrap result is kept as a tarball and the
# downloaded .debs in an apt archive directory, both under /var/cache/kiln-images/, so a rebuild
# after a recipe edit downloads nothing.
#
# Environment: KILN_IMAGES_CACHE (default /var/cache/kiln-images), KILN_DEBIAN_MIRROR and
# KILN_DEBIAN_SECURITY_MIRROR (default: read from /etc/apt/sources.list*), KILN_OS_RAW_MIB (raw
# size, default 3072), KILN_FORCE=1 rebuilds. Runs as root (debootstrap, chroot).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage() {
    echo "usage: $0 OUT_DIR [--name NAME --preload ARCHIVE_DIR]" >&2
    exit 2
}
[ $# -ge 1 ] || usage
out="$1"
shift
name=debian-12
preload=
while [ $# -gt 0 ]; do
    case "$1" in
    --name) [ $# -ge 2 ] || usage; name="$2"; shift 2 ;;
    --preload) [ $# -ge 2 ] || usage; preload="$2"; shift 2 ;;
    *) usage ;;
    esac
done
case "$name" in '' | *[!a-z0-9._-]*) echo "os-image: error: --name must match [a-z0-9._-]+" >&2; exit 2 ;; esac
if [ -n "$preload" ] && [ "$name" = debian-12 ]; then
    echo "os-image: error: --preload needs --name (plain debian-12 carries no container images)" >&2
    exit 2
fi
suite=bookworm
cache="${KILN_IMAGES_CACHE:-/var/cache/kiln-images}"
# A preloaded image needs room for the unpacked container images (~1 GiB for the OpenStack slice).
raw_mib="${KILN_OS_RAW_MIB:-$([ -n "$preload" ] && echo 4096 || echo 3072)}"
esp_mib=64
# console=ttyS0 last: it becomes /dev/console, so systemd's and kiln-firstboot's messages reach
# the serial port (what a BMC's serial-over-LAN and the tests read); the kernel logs to both.
cmdline="console=tty0 console=ttyS0,115200n8"

log() { echo "os-image: $*" >&2; }
die() {
    echo "os-image: error: $*" >&2
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
for tool in debootstrap chroot mount umount findmnt mkfs.ext4 mkfs.vfat mmd mcopy sfdisk zstd tar sha256sum awk; do
    command -v "$tool" >/dev/null || die "$tool not found (see images/README.md for the host packages)"
done
preload_archives=()
if [ -n "$preload" ]; then
    [ -d "$preload" ] || die "--preload $preload: no such directory"
    [ -x /usr/sbin/dockerd ] && [ -x /usr/bin/docker ] || die "--preload needs docker.io on this machine"
    command -v nsenter >/dev/null || die "nsenter not found (util-linux)"
    mapfile -t preload_archives < <(find -L "$preload" -maxdepth 1 -type f -name '*.tar' | LC_ALL=C sort)
    ((${#preload_archives[@]})) || die "--preload $preload: no *.tar archives there"
fi
case "$raw_mib" in '' | *[!0-9]*) die "KILN_OS_RAW_MIB must be a number of MiB" ;; esac
[ "$raw_mib" -ge 2048 ] || die "KILN_OS_RAW_MIB=$raw_mib is too small (the root needs ~1.3 GiB)"

# --- mirrors: the ones apt is configured with ------------------------------------------------------
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

mapfile -t packages < <(sed 's/#.*//' "$here/packages.list" | tr -s ' \t' '\n' | grep -v '^$')

# --- the cache check --------------------------------------------------------------------------------
recipe_hash="$(
    {
        (cd "$here" && find . -type f ! -name '*~' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
        echo "mirror $mirror updates $updates security $security suite $suite"
        echo "raw_mib $raw_mib esp_mib $esp_mib"
        # Preloaded archives by content (symlinks followed): a rebuilt container image rebuilds.
        for archive in "${preload_archives[@]}"; do
            echo "preload $(basename "$archive") $(sha256sum <"$archive" | cut -d' ' -f1)"
        done
    } | sha256sum | cut -d' ' -f1
)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
stamp="$out/.$name-inputs"
if [ "${KILN_FORCE:-0}" != 1 ] && [ -s "$out/$name.raw.zst" ] && [ -s "$out/$name.raw.zst.sha256" ] &&
    [ -s "$out/$name.json" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$recipe_hash" ]; then
    log "up to date: $out/$name.raw.zst was built from the same recipe (${recipe_hash:0:12}); nothing to do"
    exit 0
fi
log "building $name into $out (mirror $mirror, security ${security:-none}, raw ${raw_mib} MiB${preload:+, ${#preload_archives[@]} container images preloaded})"

mkdir -p "$cache/apt-archives/partial"
work="$(mktemp -d /var/tmp/kiln-os.XXXXXX)"
root="$work/root"
mkdir -p "$root"

dockerd_pid=
preload_ns=
preload_exec_root=
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
stop_preload_dockerd() {
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" 2>/dev/null || true
        for _ in $(seq 150); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$dockerd_pid" 2>/dev/null || true
        dockerd_pid=
    fi
    if [ -n "$preload_exec_root" ]; then
        # A containerd that dockerd started outlives a dockerd killed hard.
        pkill -9 -f "$preload_exec_root" 2>/dev/null || true
        { grep -o " $work/[^ ]*\| $preload_exec_root[^ ]*" /proc/mounts || true; } | sort -r |
            while read -r m; do umount -l "$m" 2>/dev/null || true; done
        rm -rf "$preload_exec_root"
        preload_exec_root=
    fi
    if [ -n "$preload_ns" ]; then
        ip netns del "$preload_ns" 2>/dev/null || true
        preload_ns=
    fi
}
cleanup() {
    stop_preload_dockerd
    unmount_all
    # Never delete through a mount point that is still there (host /dev/pts, the apt cache).
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

# --- phase 1: debootstrap (cached as a tarball) ----------------------------------------------------------
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
    for old in "$cache"/debootstrap-"$suite"-minbase-*.tar.zst; do
        [ -e "$old" ] && [ "$old" != "$tarball" ] && rm -f "$old"
    done
    tar -C "$root" -c --numeric-owner --xattrs --xattrs-include='*' . | zstd -T0 -3 -q -o "$tarball.tmp"
    mv "$tarball.tmp" "$tarball"
    phase_done "debootstrap (downloaded; cached as $tarball)"
fi

# --- phase 2: packages ------------------------------------------------------------------------------------
mount_in -t proc proc "$root/proc"
mount_in -t sysfs sysfs "$root/sys"
mount_in --bind /dev/pts "$root/dev/pts"
mount_in -t tmpfs -o mode=0755 tmpfs "$root/run"
mount_in -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount_in --bind "$cache/apt-archives" "$root/var/cache/apt/archives"

{
    echo "deb $mirror $suite main"
    [ -n "$updates" ] && echo "deb $updates $suite-updates main"
    [ -n "$security" ] && echo "deb $security $suite-security main"
} >"$root/etc/apt/sources.list"
rm -f "$root"/etc/apt/sources.list.d/*
rm -f "$root/etc/resolv.conf"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
# Build-time only: snapshot mirrors' Release files may be past Valid-Until; no translations.
cat >"$root/etc/apt/apt.conf.d/99kiln-build" <<'EOF'
Acquire::Check-Valid-Until "false";
Acquire::Languages "none";
APT::Install-Recommends "false";
Dpkg::Use-Pty "false";
Dpkg::Options { "--force-unsafe-io"; };
EOF
printf '#!/bin/sh\n# Kiln image build: start no services in the chroot.\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"
install -D -m 0644 "$here/files/etc/dpkg/dpkg.cfg.d/kiln-nodoc" "$root/etc/dpkg/dpkg.cfg.d/kiln-nodoc"
install -D -m 0644 "$here/files/etc/initramfs-tools/conf.d/kiln" "$root/etc/initramfs-tools/conf.d/kiln"

in_root apt-get -q update >"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    die "apt-get update failed"
}
in_root apt-get -q -y -o Dpkg::Options::=--force-confold dist-upgrade >>"$work/apt.log" 2>&1 || {
    tail -n 30 "$work/apt.log" >&2
    die "apt-get dist-upgrade failed"
}
in_root apt-get -q -y -o Dpkg::Options::=--force-confold install --no-install-recommends "${packages[@]}" \
    >>"$work/apt.log" 2>&1 || {
    tail -n 40 "$work/apt.log" >&2
    die "apt-get install failed"
}
# Drop superseded .debs from the shared archive cache (it is bind-mounted at /var/cache/apt/archives).
in_root apt-get -q autoclean >>"$work/apt.log" 2>&1 || true
kernel="$(in_root linux-version list | sort -V | tail -n1)"
[ -n "$kernel" ] && [ -e "$root/boot/vmlinuz-$kernel" ] && [ -e "$root/boot/initrd.img-$kernel" ] ||
    die "no kernel/initrd in /boot after the install"
[ -L "$root/vmlinuz" ] && [ -L "$root/initrd.img" ] || die "/vmlinuz and /initrd.img symlinks missing"
phase_done "packages (kernel $kernel; $(grep -c '^Setting up' "$work/apt.log") packages set up)"

# --- phase 3: configure -------------------------------------------------------------------------------------
root_uuid="$(cat /proc/sys/kernel/random/uuid)"
esp_id="$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n' | tr a-f A-F)"
esp_uuid="${esp_id:0:4}-${esp_id:4:4}"
disk_id="0x$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')"

# The recipe's files, with explicit owners and modes (executables and */bin/*, */sbin/* get 0755).
(cd "$here/files" && find . -type f) | while read -r f; do
    mode=0644
    case "$f" in */bin/* | */sbin/*) mode=0755 ;; esac # even from a checkout that lost the x bit
    [ -x "$here/files/$f" ] && mode=0755
    install -D -o root -g root -m "$mode" "$here/files/$f" "$root/${f#./}"
done

cat >"$root/etc/fstab" <<EOF
# <file system>	<mount point>	<type>	<options>	<dump>	<pass>
UUID=$root_uuid	/	ext4	errors=remount-ro	0	1
UUID=$esp_uuid	/boot/efi	vfat	umask=0077,nofail,x-systemd.device-timeout=10s	0	2
EOF
mkdir -p "$root/boot/efi"
echo debian >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	debian
::1	localhost ip6-localhost ip6-loopback
ff02::1	ip6-allnodes
ff02::2	ip6-allrouters
EOF

in_root systemctl enable systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
    ssh.service containerd.service docker.service kiln-firstboot.service serial-getty@ttyS0.service \
    >>"$work/configure.log" 2>&1 || {
    cat "$work/configure.log" >&2
    die "systemctl enable failed"
}
in_root passwd -l root >>"$work/configure.log" 2>&1
# Each node gets its own machine-id (networkd's DHCP client id derives from it) and SSH host keys.
: >"$root/etc/machine-id"
[ -L "$root/var/lib/dbus/machine-id" ] || rm -f "$root/var/lib/dbus/machine-id"
rm -f "$root"/etc/ssh/ssh_host_*
rm -f "$root/etc/resolv.conf"
ln -s ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
rm -f "$root/usr/sbin/policy-rc.d" "$root/etc/apt/apt.conf.d/99kiln-build"

# GRUB: one grub.cfg on the root filesystem, loaded by the config embedded in both boot images.
subst() { sed -e "s|@ROOT_UUID@|$root_uuid|g" -e "s|@CMDLINE@|$cmdline|g" "$1"; }
mkdir -p "$root/boot/grub"
subst "$here/grub/grub.cfg.in" >"$root/boot/grub/grub.cfg"
# The embedded config runs in GRUB's rescue parser, which knows no comments: strip them.
subst "$here/grub/embed.cfg.in" | grep -v -e '^[[:space:]]*#' -e '^[[:space:]]*$' >"$root/tmp/kiln-embed.cfg"
common_mods="part_msdos part_gpt ext2 fat normal configfile linux echo test search search_fs_uuid
    search_label serial terminal gzio boot sleep halt reboot minicmd ls cat"
# shellcheck disable=SC2086
in_root grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -o /tmp/kiln-core.img \
    -c /tmp/kiln-embed.cfg -p /boot/grub biosdisk $common_mods
# shellcheck disable=SC2086
in_root grub-mkimage -O x86_64-efi -d /usr/lib/grub/x86_64-efi -o /tmp/kiln-BOOTX64.EFI \
    -c /tmp/kiln-embed.cfg -p /boot/grub efi_gop efi_uga all_video $common_mods
cp "$root/tmp/kiln-core.img" "$root/tmp/kiln-BOOTX64.EFI" "$root/usr/lib/grub/i386-pc/boot.img" "$work/"
core_size="$(stat -c %s "$work/kiln-core.img")"
[ "$core_size" -le $(((2048 - 1) * 512)) ] || die "core.img is $core_size bytes: too big for the post-MBR gap"

# Trim: documentation, manual pages, translations, apt lists and caches, logs.
unmount_all
find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root/usr/share/lintian" "$root/usr/share/linda"
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*
mkdir -p "$root/var/lib/apt/lists/partial" "$root/var/cache/apt/archives/partial"
rm -f "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old "$root"/etc/*-
find "$root/var/log" -type f -delete
rm -rf "$root"/tmp/* "$root"/tmp/.[!.]* "$root"/var/tmp/* "$root"/root/.bash_history
rootfs_bytes="$(du -sb "$root" | cut -f1)"
phase_done "configure (root filesystem $((rootfs_bytes / 1048576)) MiB)"

# --- phase 3b: preloaded container images (--preload) -----------------------------------------------
if ((${#preload_archives[@]})); then
    # The image's Docker Engine is Debian's docker.io, as on this machine: the same overlay2 layout.
    preload_ns="kiln-os-preload-$$"
    preload_exec_root="/run/kiln-os-preload-$$"
    sock="unix://$preload_exec_root/docker.sock"
    mkdir -p "$root/var/lib/docker" "$preload_exec_root"
    chmod 0710 "$root/var/lib/docker"
    printf '%s\n' "{" \
        "  \"data-root\": \"$root/var/lib/docker\"," \
        "  \"exec-root\": \"$preload_exec_root\"," \
        "  \"pidfile\": \"$preload_exec_root/dockerd.pid\"," \
        "  \"hosts\": [\"$sock\"]," \
        "  \"bridge\": \"none\", \"iptables\": false, \"ip6tables\": false," \
        "  \"ip-forward\": false, \"ip-masq\": false, \"storage-driver\": \"overlay2\"" \
        "}" >"$work/daemon.json"
    ip netns add "$preload_ns"
    # nsenter, not "ip netns exec" (which remounts /sys and breaks dockerd's cgroup mounts).
    setsid nsenter --net="/run/netns/$preload_ns" /usr/sbin/dockerd --config-file "$work/daemon.json" \
        >"$work/dockerd.log" 2>&1 </dev/null &
    dockerd_pid=$!
    for _ in $(seq 150); do
        /usr/bin/docker -H "$sock" version >/dev/null 2>&1 && break
        kill -0 "$dockerd_pid" 2>/dev/null || {
            tail -n 20 "$work/dockerd.log" >&2
            die "the preload dockerd exited"
        }
        sleep 0.2
    done
    /usr/bin/docker -H "$sock" version >/dev/null 2>&1 || die "the preload dockerd did not answer"
    for archive in "${preload_archives[@]}"; do
        /usr/bin/docker -H "$sock" load -q -i "$archive" >&2 || die "docker load $archive failed"
    done
    stop_preload_dockerd
    # Only the images and their layers: each node's dockerd makes its own networks, containerd
    # state and engine ID.
    find "$root/var/lib/docker" -mindepth 1 -maxdepth 1 ! -name image ! -name overlay2 -exec rm -rf {} +
    preload_bytes="$(du -sb "$root/var/lib/docker" | cut -f1)"
    phase_done "preload (${#preload_archives[@]} container images, $((preload_bytes / 1048576)) MiB in /var/lib/docker)"
fi

# --- phase 4: disk image --------------------------------------------------------------------------------------
raw="$work/$name.raw"
esp_start=2048
esp_sectors=$((esp_mib * 2048))
root_start=$((esp_start + esp_sectors))
total_sectors=$((raw_mib * 2048))
root_sectors=$((total_sectors - root_start))
truncate -s "$((total_sectors * 512))" "$raw"
sfdisk -q --no-reread --no-tell-kernel "$raw" <<EOF
label: dos
label-id: $disk_id
unit: sectors

start=$esp_start, size=$esp_sectors, type=ef
start=$root_start, size=$root_sectors, type=83, bootable
EOF

# p1: the ESP, made in a file with mkfs.vfat + mtools (the host needs no vfat driver).
mkfs.vfat -F 32 -s 1 -n EFI -i "$esp_id" -C "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT
mcopy -i "$work/esp.img" "$work/kiln-BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$work/esp.img" of="$raw" bs=512 seek="$esp_start" conv=notrunc,sparse status=none
rm -f "$work/esp.img"

# p2: ext4 made straight from the directory tree, written in place at the partition's offset.
# No orphan_file/metadata_csum_seed: bookworm's GRUB 2.06 must read this filesystem.
mkfs.ext4 -q -F -L root -U "$root_uuid" -m 1 -O ^orphan_file,^metadata_csum_seed \
    -E "offset=$((root_start * 512))" -d "$root" "$raw" "$((root_sectors / 2))k"

# BIOS: core.img into the gap after the MBR, boot.img's code (first 440 bytes) into the MBR.
dd if="$work/kiln-core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none
dd if="$work/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
rm -rf "$root"
phase_done "disk ($raw_mib MiB raw, root UUID $root_uuid, ESP $esp_uuid)"

# --- phase 5: compress and describe -----------------------------------------------------------------------------
zstd -3 -T0 -q -f "$raw" -o "$work/$name.raw.zst"
raw_size="$(stat -c %s "$raw")"
rm -f "$raw"
zst_size="$(stat -c %s "$work/$name.raw.zst")"
sha="$(sha256sum "$work/$name.raw.zst" | cut -d' ' -f1)"
echo "$sha  $name.raw.zst" >"$work/$name.raw.zst.sha256"
cat >"$work/$name.json" <<EOF
{"name":"$name","format":"raw+zstd","raw_size":$raw_size,"size":$zst_size,"sha256":"$sha","ready_ports":[2376],"built_at":"$(date -u +%Y-%m-%dT%H:%M:%SZ)"}
EOF
rm -f "$stamp"
mv "$work/$name.raw.zst" "$out/$name.raw.zst"
mv "$work/$name.raw.zst.sha256" "$out/$name.raw.zst.sha256"
mv "$work/$name.json" "$out/$name.json"
echo "$recipe_hash" >"$stamp"
phase_done "compress ($((zst_size / 1048576)) MiB zstd of $((raw_size / 1048576)) MiB raw)"
log "done in $(since "$t_start") s: $out/$name.raw.zst sha256 $sha"
