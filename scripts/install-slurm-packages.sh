#!/usr/bin/env bash
# Install the Debian packages of the test Slurm cluster (slurmctld, slurmd, slurmdbd, munge, MariaDB).
# Needs root; does nothing when they are all there already.
set -euo pipefail
needed=(slurm-wlm munge slurmdbd mariadb-server)
missing=0
for c in slurmctld slurmd slurmdbd sacct munged mariadbd mariadb-install-db; do
    PATH=$PATH:/usr/sbin command -v "$c" >/dev/null || missing=1
done
[ "$missing" = 0 ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "install-slurm-packages: needs root to apt-get install ${needed[*]}" >&2
    exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${needed[@]}" >/dev/null
