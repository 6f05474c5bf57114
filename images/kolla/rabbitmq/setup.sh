#!/bin/bash
# Runs in the kolla/rabbitmq chroot after the packages: drop the cookie and node data the
# postinst made, so that no two deployments share them.
set -euo pipefail
rm -f /var/lib/rabbitmq/.erlang.cookie
find /var/lib/rabbitmq/mnesia -mindepth 1 -delete 2>/dev/null || true
install -d -o rabbitmq -g rabbitmq -m 0750 /var/lib/rabbitmq /var/lib/rabbitmq/mnesia
install -d -o rabbitmq -g rabbitmq -m 0750 /var/log/rabbitmq
