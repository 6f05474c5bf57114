#!/bin/bash
# Runs in the kolla/mariadb-server chroot after the packages: an empty datadir (the postinst
# made a throw-away one), the socket directory (/run is part of the image), no Debian extras.
set -euo pipefail
find /var/lib/mysql -mindepth 1 -delete
install -d -o mysql -g mysql -m 0750 /var/lib/mysql
install -d -o mysql -g mysql -m 0755 /run/mysqld /var/log/mysql
rm -f /etc/mysql/debian.cnf /etc/mysql/debian-start
