#!/bin/bash
# Runs in the kolla/placement-api chroot after the packages: the packaged uwsgi ini without
# AppArmor, no sqlite database.
set -euo pipefail
for ini in /etc/placement/*uwsgi*.ini; do
    [ -f "$ini" ] || continue
    sed -i -e 's/^\(plugins *= *\)python3,apparmor/\1python3/' -e '/^apparmor-profile/d' "$ini"
done
rm -f /var/lib/placement/*.sqlite /var/lib/placement/*.db
install -d -o placement -g placement -m 0750 /var/lib/placement /var/log/placement
