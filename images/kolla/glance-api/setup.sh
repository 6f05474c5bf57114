#!/bin/bash
# Runs in the kolla/glance-api chroot after the packages: the image store and lock directories
# owned by glance (a new named volume on /var/lib/glance starts with them), no sqlite database.
set -euo pipefail
rm -f /var/lib/glance/glance.sqlite /var/lib/glance/glance.db
install -d -o glance -g glance -m 0750 /var/lib/glance
install -d -o glance -g glance -m 0750 /var/lib/glance/images /var/lib/glance/tmp /var/log/glance
