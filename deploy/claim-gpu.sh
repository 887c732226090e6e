#!/bin/sh
# Claim one GPU for this container, then run the command with CUDA_VISIBLE_DEVICES set to it.
#
# Why: `docker compose up --scale worker=N` gives every replica the same device reservation,
# and Docker does not hand out GPUs one per replica (docker/compose#11863). So the worker
# service reserves all of the host's GPUs and each replica claims the lowest free index by
# taking an exclusive flock on /var/lock/pbt-gpus/<index> in a volume shared by the replicas.
# The lock is held by the open descriptor the command inherits and is released when the
# container's processes exit, however they exit; a restarted replica claims again.
#
#   PBT_GPU_COUNT   number of GPUs to choose from (default: `nvidia-smi -L | wc -l`)
#   PBT_GPU_LOCKS   lock directory (default /var/lock/pbt-gpus)
set -eu
locks=${PBT_GPU_LOCKS:-/var/lock/pbt-gpus}
count=${PBT_GPU_COUNT:-}
if [ -z "$count" ]; then
    count=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
fi
if [ "${count:-0}" -lt 1 ]; then
    echo "pbt-claim-gpu: no GPU visible (nvidia-smi -L lists none; set PBT_GPU_COUNT to override)" >&2
    exit 1
fi
mkdir -p "$locks"
i=0
while [ "$i" -lt "$count" ]; do
    exec 9>"$locks/$i"
    if flock -n 9; then
        export CUDA_VISIBLE_DEVICES="$i"
        echo "pbt-claim-gpu: this replica uses GPU $i" >&2
        exec "$@"
    fi
    exec 9>&-
    i=$((i + 1))
done
echo "pbt-claim-gpu: all $count GPUs are claimed by other replicas; scale to at most $count" >&2
exit 1
