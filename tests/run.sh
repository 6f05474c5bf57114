#!/usr/bin/env bash
# Kiln's test command (README, `.ci/run`): installs what the suite needs on a fresh Debian machine,
# then runs formatting, lint and every test. Tests start their own peers (PostgreSQL in a temp
# dir, the kiln daemon, dnsmasq, ipmi_sim, sushy-tools (pip, in a venv under /tmp), QEMU VMs
# inside network namespaces they create) and stop them.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
command -v psql >/dev/null || need+=(postgresql-client)
command -v runuser >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v busybox >/dev/null || need+=(busybox)
command -v ip >/dev/null || need+=(iproute2)
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[ -e /usr/lib/ipxe/undionly.kpxe ] || need+=(ipxe)
[ -e /usr/share/OVMF/OVMF_CODE_4M.fd ] || need+=(ovmf)
command -v dnsmasq >/dev/null || need+=(dnsmasq-base)
command -v ipmi_sim >/dev/null || need+=(openipmi)
command -v ipmitool >/dev/null || need+=(ipmitool)
command -v python3 >/dev/null || need+=(python3)
python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
command -v openssl >/dev/null || need+=(openssl)
# Image recipes (images/): the Debian OS image and the deploy ramdisk; qemu-img for imports.
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
command -v mkfs.vfat >/dev/null || need+=(dosfstools)
command -v mcopy >/dev/null || need+=(mtools)
command -v sfdisk >/dev/null || need+=(fdisk)
command -v zstd >/dev/null || need+=(zstd)
command -v cpio >/dev/null || need+=(cpio)
command -v strip >/dev/null || need+=(binutils)
command -v qemu-img >/dev/null || need+=(qemu-utils)
# Container deployer tests: a real dockerd (Debian's 20.10; another docker client may sit earlier
# on PATH, so check the daemon's path), docker-in-docker nodes and a local registry.
[ -x /usr/sbin/dockerd ] || need+=(docker.io)
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v wget >/dev/null || need+=(wget)
# The deployer's ssh:// engines: the system ssh client, and a real sshd for tests/services_ssh.
command -v ssh >/dev/null || need+=(openssh-client)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
if ((${#need[@]})); then
    echo "installing: ${need[*]}"
    # Keep package scripts from starting services (PostgreSQL's cluster): tests start their own.
    created_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && created_policy=1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    # A qemu-utils from another suite (backports) breaks Debian's qemu-system-x86, so apt removes
    # it to install that (as on a fresh machine here); naming it in the same install would fail
    # instead. Install Debian's qemu-utils afterwards when qemu-img went with it.
    if ! command -v qemu-img >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-utils >/dev/null
    fi
    [ "$created_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi

cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings
# The deploy ramdisk and Debian image for the end-to-end test, built once and cached by input hash
# under /var/cache/kiln-images (a fresh machine: ~3 min, mostly debootstrap and apt).
cargo build --locked --bins
target/debug/kiln image build ramdisk --files-root /var/cache/kiln-images/files --recipes images \
    --agent target/debug/kiln-agent
target/debug/kiln image build os --files-root /var/cache/kiln-images/files --recipes images
cargo test --locked --all-targets
