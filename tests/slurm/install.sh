#!/usr/bin/env bash
# Installs what tests/test_slurm.py needs for its throwaway SLURM cluster: munge, slurmctld,
# slurmd and the client tools (sbatch, srun, squeue, scontrol, sacct), from Debian.
# Idempotent: does nothing when they are already there. Run by `make test` (target slurm-deps).
#
# Exit status: 0 when installed (or already there), or when this machine cannot install them
# (not root, no apt-get) -- the test then skips and says why; non-zero when apt-get fails.
set -euo pipefail

PACKAGES=(munge slurmctld slurmd slurm-client)
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for command in munged slurmctld slurmd sbatch srun squeue scontrol; do
    command -v "$command" >/dev/null 2>&1 || missing+=("$command")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "slurm-deps: munge and SLURM are installed ($(slurmctld -V))"
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "slurm-deps: missing ${missing[*]} and not root: not installing (tests/test_slurm.py will skip)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm-deps: missing ${missing[*]} and no apt-get: not installing (tests/test_slurm.py will skip)"
    exit 0
fi

echo "slurm-deps: installing ${PACKAGES[*]} (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# The packages' service scripts may try to start the daemons with the distribution's config;
# the tests never use those daemons: they start their own, with their own config and sockets.
apt-get install -y -q --no-install-recommends "${PACKAGES[@]}"
echo "slurm-deps: installed $(slurmctld -V)"
