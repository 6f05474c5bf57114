#!/bin/bash
# Runs in the kolla/keystone chroot after the packages: the packaged uwsgi ini without AppArmor
# (it aborts in a container), empty key directories owned by keystone, no sqlite database.
set -euo pipefail
sed -i -e 's/^\(plugins *= *\)python3,apparmor/\1python3/' -e '/^apparmor-profile/d' \
    /etc/keystone/keystone-uwsgi.ini
for d in /etc/keystone/fernet-keys /etc/keystone/credential-keys; do
    rm -rf "$d"
    install -d -o keystone -g keystone -m 0700 "$d"
done
rm -f /var/lib/keystone/keystone.db /var/lib/keystone/keystone.sqlite
install -d -o keystone -g keystone -m 0750 /var/lib/keystone /var/log/keystone
chown keystone:keystone /etc/keystone
