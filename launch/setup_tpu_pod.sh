#!/usr/bin/env bash
# Install fergate on every worker of a Cloud TPU VM pod slice, once: copy this repository to
# ~/fergate on each (or clone it there: REPO=https://... ), make ~/fergate/.venv and install
# fergate with jax's TPU runtime (`.[tpu]`, pinned to the jax the core uses). Then
# launch/tpu_pod.sh runs commands on all workers. Re-running updates the code and the install.
#   launch/setup_tpu_pod.sh TPU_NAME ZONE
set -euo pipefail
TPU=${1:?tpu name}; ZONE=${2:?zone}
here=$(cd "$(dirname "$0")/.." && pwd)
if [ -n "${REPO:-}" ]; then
  fetch="(test -d ~/fergate/.git && git -C ~/fergate pull --ff-only) || git clone $REPO ~/fergate"
else
  tar -C "$here" --exclude=.venv --exclude=.git -czf /tmp/fergate-src.tgz .
  gcloud compute tpus tpu-vm scp /tmp/fergate-src.tgz "$TPU":/tmp/ --zone "$ZONE" --worker=all
  fetch="mkdir -p ~/fergate && tar -C ~/fergate -xzf /tmp/fergate-src.tgz"
fi
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "set -e; $fetch; cd ~/fergate; \
  python3 -m venv .venv && .venv/bin/pip install -q -e '.[tpu]' && \
  .venv/bin/python -c 'import jax, fergate; print(jax.devices()[:1], jax.device_count(), \"devices\")'"
