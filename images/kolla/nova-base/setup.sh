#!/bin/bash
# Runs in the nova-base chroot after the packages: nova's state and lock directories owned by
# nova, no sqlite database, AppArmor out of the packaged uwsgi inis.
set -euo pipefail
rm -f /var/lib/nova/*.sqlite /var/lib/nova/*.db
install -d -o nova -g nova -m 0750 /var/lib/nova /var/lib/nova/tmp /var/lib/nova/instances /var/log/nova
for ini in /etc/nova/*uwsgi*.ini; do
    [ -f "$ini" ] || continue
    sed -i -e 's/^\(plugins *= *\)python3,apparmor/\1python3/' -e '/^apparmor-profile/d' "$ini"
done
