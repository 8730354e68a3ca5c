#!/usr/bin/env bash
# Run fergate on every worker of a Cloud TPU VM pod slice. jax.distributed finds its peers
# from the TPU metadata (--distributed); data must be on storage every worker can read
# (prepare it once with `fergate prep ... --num_shards W --shard_index i` on the workers).
# Each worker needs ~/fergate/.venv: launch/setup_tpu_pod.sh TPU_NAME ZONE makes it.
#   launch/tpu_pod.sh TPU_NAME ZONE train --config configs/modul.py --workdir gs://bucket/run \
#       --config.data.dir=/mnt/data/ckplus
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}; shift 2
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all \
  --command "cd ~/fergate && .venv/bin/fergate $* --distributed"
