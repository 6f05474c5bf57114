#!/bin/bash
# Build Kiln's deploy ramdisk: OUT_DIR/vmlinuz and OUT_DIR/initramfs.gz.
#
#   images/ramdisk/build.sh OUT_DIR [AGENT_BINARY]
#
# AGENT_BINARY defaults to target/debug/kiln-agent (relative to the repository root). The kernel
# is Debian 12's current linux-image-6.1.0-*-amd64 (the one linux-image-amd64 depends on), the
# userland busybox-static; both .debs are fetched with `apt-get download` into
# /var/cache/kiln-images/debs and reused. The build is skipped when OUT_DIR already holds outputs
# built from the same inputs (this recipe's files, the agent binary, the kernel and busybox
# packages, the shared libraries the agent needs).
#
# Environment: KILN_IMAGES_CACHE (default /var/cache/kiln-images), KILN_KERNEL_PACKAGE (e.g.
# linux-image-6.1.0-56-amd64; default: what linux-image-amd64 depends on), KILN_FORCE=1 rebuilds.
# Host packages: apt, dpkg, cpio, gzip, binutils (strip), coreutils, findutils, libc-bin (ldd).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

if [ $# -lt 1 ] || [ $# -gt 2 ]; then
    echo "usage: $0 OUT_DIR [AGENT_BINARY]" >&2
    exit 2
fi
out="$1"
agent="${2:-$repo/target/debug/kiln-agent}"
cache="${KILN_IMAGES_CACHE:-/var/cache/kiln-images}"
debs="$cache/debs"

log() { echo "ramdisk: $*" >&2; }
die() { echo "ramdisk: error: $*" >&2; exit 1; }
t0=$(date +%s.%N)
elapsed() { awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

[ -x "$agent" ] || die "agent binary $agent not found or not executable (cargo build --bin kiln-agent)"
for tool in apt-get apt-cache dpkg-deb cpio gzip ldd sha256sum; do
    command -v "$tool" >/dev/null || die "$tool not found (see images/README.md for the host packages)"
done
mkdir -p "$out" "$debs"
out="$(cd "$out" && pwd)"

# --- which packages ----------------------------------------------------------------------------
# Resolve a package to "NAME VERSION" from the apt lists; offline, fall back to the newest cached .deb.
resolve() {
    local pkg="$1" ver
    ver="$(apt-cache show --no-all-versions "$pkg" 2>/dev/null | sed -n 's/^Version: //p' | head -n1 || true)"
    if [ -n "$ver" ]; then
        echo "$pkg $ver"
        return
    fi
    local f
    f="$(ls -1 "$debs/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n1 || true)"
    [ -n "$f" ] || die "package $pkg is unknown to apt (apt-get update?) and not cached in $debs"
    echo "$pkg $(dpkg-deb -f "$f" Version)"
}
kernel_pkg="${KILN_KERNEL_PACKAGE:-}"
if [ -z "$kernel_pkg" ]; then
    kernel_pkg="$(apt-cache depends linux-image-amd64 2>/dev/null |
        sed -n 's/^ *Depends: \(linux-image-6\.1\.0-[0-9]*-amd64\)$/\1/p' | head -n1 || true)"
fi
if [ -z "$kernel_pkg" ]; then
    kernel_pkg="$(ls -1 "$debs"/linux-image-6.1.0-*-amd64_*.deb 2>/dev/null | sort -V | tail -n1 || true)"
    kernel_pkg="${kernel_pkg##*/}"
    kernel_pkg="${kernel_pkg%%_*}"
fi
[ -n "$kernel_pkg" ] || die "cannot tell the kernel package (apt-cache depends linux-image-amd64 gave nothing)"
# One apt-cache call for both versions (each call costs ~0.5 s); the cached .debs when offline.
versions="$(apt-cache show --no-all-versions "$kernel_pkg" busybox-static 2>/dev/null |
    awk '/^Package: /{p=$2} /^Version: /{print p, $2}' || true)"
kernel_ver="$(awk -v p="$kernel_pkg" '$1 == p {print $2; exit}' <<<"$versions")"
busybox_ver="$(awk '$1 == "busybox-static" {print $2; exit}' <<<"$versions")"
[ -n "$kernel_ver" ] || read -r _ kernel_ver <<<"$(resolve "$kernel_pkg")"
[ -n "$busybox_ver" ] || read -r _ busybox_ver <<<"$(resolve busybox-static)"

# --- the inputs' hash, and the cache check -------------------------------------------------------
mapfile -t libs < <(ldd "$agent" | awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' | sort -u)
[ ${#libs[@]} -gt 0 ] || die "ldd found no shared libraries for $agent (static binaries are fine, but say so)"
certs=/etc/ssl/certs/ca-certificates.crt
[ -r "$certs" ] || certs=
inputs_hash="$(
    {
        (cd "$here" && find . -type f ! -name '*~' -print0 | sort -z | xargs -0 sha256sum)
        echo "kernel $kernel_pkg $kernel_ver"
        echo "busybox-static $busybox_ver"
        sha256sum "$agent" | awk '{print "agent", $1}'
        for l in "${libs[@]}"; do sha256sum "$(readlink -f "$l")" | awk -v l="$l" '{print "lib", l, $1}'; done
        [ -n "$certs" ] && sha256sum "$certs" | awk '{print "certs", $1}'
        true
    } | sha256sum | cut -d' ' -f1
)"
stamp="$out/.ramdisk-inputs"
if [ "${KILN_FORCE:-0}" != 1 ] && [ -s "$out/vmlinuz" ] && [ -s "$out/initramfs.gz" ] &&
    [ "$(cat "$stamp" 2>/dev/null)" = "$inputs_hash" ]; then
    log "up to date: $out/vmlinuz and $out/initramfs.gz were built from the same inputs ($kernel_pkg $kernel_ver, agent $(sha256sum "$agent" | cut -c1-12)); nothing to do"
    exit 0
fi
log "building: kernel $kernel_pkg $kernel_ver, busybox-static $busybox_ver, agent $agent"

# --- fetch the .debs (cached) --------------------------------------------------------------------
fetch_deb() {
    local pkg="$1" ver="$2" f
    f="$(ls -1 "$debs/${pkg}_"*.deb 2>/dev/null | while read -r c; do
        [ "$(dpkg-deb -f "$c" Version)" = "$ver" ] && echo "$c"; done | head -n1)"
    if [ -z "$f" ]; then
        log "apt-get download $pkg=$ver"
        (cd "$debs" && apt-get download -q -o APT::Sandbox::User=root "$pkg=$ver" >&2) ||
            die "apt-get download $pkg=$ver failed"
        f="$(ls -1t "$debs/${pkg}_"*.deb | head -n1)"
    fi
    echo "$f"
}
kernel_deb="$(fetch_deb "$kernel_pkg" "$kernel_ver")"
busybox_deb="$(fetch_deb busybox-static "$busybox_ver")"
log "packages ready ($(elapsed) s)"

work="$(mktemp -d "${TMPDIR:-/tmp}/kiln-ramdisk.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$work/busybox" "$root"

# --- kernel and modules ----------------------------------------------------------------------------
# The unpacked kernel (vmlinuz + modules + a modules.dep, which the .deb lacks: its postinst runs
# depmod; busybox's depmod makes one) is cached per kernel package version, so that a rebuild after
# a recipe or agent change takes seconds. Other kernel versions are dropped from the cache.
dpkg-deb -x "$busybox_deb" "$work/busybox"
bb="$work/busybox/bin/busybox"
[ -x "$bb" ] || die "busybox-static has no bin/busybox"
kcache="$cache/kernel/${kernel_pkg}_${kernel_ver}"
if [ ! -e "$kcache/.complete" ]; then
    rm -rf "$cache/kernel"
    mkdir -p "$kcache"
    dpkg-deb --fsys-tarfile "$kernel_deb" | tar -x -C "$kcache" --wildcards './boot/vmlinuz-*' './lib/modules/*'
    kver="$(ls "$kcache/lib/modules")"
    [ "$(echo "$kver" | wc -l)" = 1 ] || die "expected one kernel version in $kernel_deb, got: $kver"
    "$bb" depmod -b "$kcache" "$kver"
    touch "$kcache/.complete"
    log "kernel $kver unpacked into $kcache, modules.dep made ($(elapsed) s)"
fi
kver="$(ls "$kcache/lib/modules")"
kmods="$kcache/lib/modules/$kver"

# The listed modules and everything they need, from modules.dep (names compare with '-' as '_').
awk -v builtin="$kmods/modules.builtin" -v listfile="$here/modules.list" -v out="$work/modules" '
    function norm(s) { sub(/.*\//, "", s); sub(/\.ko$/, "", s); gsub(/-/, "_", s); return s }
    function add(n,   i, k, d) {
        if (n in want) return
        want[n] = 1
        print path[n]
        k = split(deps[n], d, " ")
        for (i = 1; i <= k; i++) add(norm(d[i]))
    }
    BEGIN {
        while ((getline line < builtin) > 0) isbuiltin[norm(line)] = 1
    }
    {
        m = $1; sub(/:$/, "", m)
        n = norm(m); path[n] = m
        $1 = ""; deps[n] = $0
    }
    END {
        while ((getline line < listfile) > 0) {
            sub(/#.*/, "", line); split(line, f, " "); if (f[1] == "") continue
            n = norm(f[1])
            if (n in path) { add(n); print f[1] > out }
            else if (n in isbuiltin) print "ramdisk: module " f[1] " is built into the kernel; skipped" > "/dev/stderr"
            else { print "ramdisk: error: module " f[1] " is not in the kernel package" > "/dev/stderr"; failed = 1 }
        }
        exit failed
    }' "$kmods/modules.dep" >"$work/module-paths" || die "module list check failed"

dest="$root/lib/modules/$kver"
mkdir -p "$dest"
(cd "$kmods" && xargs cp --parents -t "$dest") <"$work/module-paths"
cp "$kmods/modules.builtin" "$kmods/modules.order" "$dest/"
"$bb" depmod -b "$root" "$kver"
cp "$kcache/boot/vmlinuz-$kver" "$work/vmlinuz"
log "$(wc -l <"$work/module-paths") modules (with dependencies) for $(wc -l <"$work/modules") listed ($(elapsed) s)"

# --- userland: busybox, the agent and its libraries ---------------------------------------------------
mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc/kiln,dev,proc,sys,run,tmp,root,var/log,usr/share/udhcpc}
ln -s ../run "$root/var/run"
chmod 1777 "$root/tmp"
chmod 0700 "$root/root"
cp "$bb" "$root/bin/busybox"
"$bb" --list-full | while read -r applet; do
    [ "$applet" = bin/busybox ] && continue
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
done
# poweroff, reboot and halt are in that list (sbin/); check, since the agent relies on them.
for a in sbin/poweroff sbin/reboot sbin/halt sbin/modprobe sbin/udhcpc bin/sh; do
    [ -L "$root/$a" ] || die "busybox link /$a missing"
done

if command -v strip >/dev/null; then
    strip --strip-debug -o "$root/usr/bin/kiln-agent" "$agent"
else
    cp "$agent" "$root/usr/bin/kiln-agent"
fi
chmod 0755 "$root/usr/bin/kiln-agent"
for l in "${libs[@]}"; do
    mkdir -p "$root/$(dirname "$l")"
    cp -L "$l" "$root/$l"
done
if [ -n "$certs" ]; then
    mkdir -p "$root/etc/ssl/certs"
    cp "$certs" "$root/etc/ssl/certs/ca-certificates.crt"
fi

install -m 0755 "$here/init" "$root/init"
install -m 0755 "$here/udhcpc.script" "$root/usr/share/udhcpc/default.script"
cp "$work/modules" "$root/etc/kiln/modules"
cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
tty:x:5:
EOF
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
::1	localhost ip6-localhost ip6-loopback
EOF
echo 'hosts: files dns' >"$root/etc/nsswitch.conf"
: >"$root/etc/resolv.conf"
cat >"$root/etc/os-release" <<EOF
NAME="Kiln deploy ramdisk"
ID=kiln-ramdisk
VERSION_ID="$kver"
EOF
# The kernel opens /dev/console before /init runs; devtmpfs is not mounted yet then.
mknod -m 0600 "$root/dev/console" c 5 1 2>/dev/null || log "mknod /dev/console failed (not root?); /init copes"

# Smoke test of the agent with the copied libraries (when the host can chroot).
if [ "$(id -u)" = 0 ]; then
    chroot "$root" /usr/bin/kiln-agent --version >/dev/null ||
        die "kiln-agent does not run inside the ramdisk tree (missing libraries?)"
fi

# --- pack ------------------------------------------------------------------------------------------
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0) | gzip -6 -n >"$work/initramfs.gz"
install -m 0644 "$work/vmlinuz" "$out/vmlinuz.new"
install -m 0644 "$work/initramfs.gz" "$out/initramfs.gz.new"
mv "$out/vmlinuz.new" "$out/vmlinuz"
mv "$out/initramfs.gz.new" "$out/initramfs.gz"
echo "$inputs_hash" >"$stamp"
cat >"$out/ramdisk.txt" <<EOF
kernel: $kernel_pkg $kernel_ver ($kver)
busybox-static: $busybox_ver
agent: $agent sha256 $(sha256sum "$agent" | cut -d' ' -f1)
modules: $(tr '\n' ' ' <"$work/modules")
inputs: $inputs_hash
built_at: $(date -u +%Y-%m-%dT%H:%M:%SZ)
EOF
log "done in $(elapsed) s: $out/vmlinuz ($(stat -c %s "$out/vmlinuz") bytes), $out/initramfs.gz ($(stat -c %s "$out/initramfs.gz") bytes)"
