#!/usr/bin/env bash
# Runs visgen on every worker of a Cloud TPU VM (pod slice), big_vision style:
# copies the checkout, bootstraps a venv on each worker, then starts
# visgen.main on all workers at once. JAX finds the other workers itself
# (VISGEN_DISTRIBUTED=1 -> jax.distributed.initialize()).
#
#   TPU_NAME=my-v4-32 ZONE=us-central2-b \
#     launch/tpu_vm.sh configs/dit_imagenet.py:variant=XL/2 gs://bucket/dit
#
# No hyperparameters here: everything is in the config and its flags.
set -euo pipefail
CONFIG="$1"; WORKDIR="$2"; shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REMOTE_DIR="${REMOTE_DIR:-visgen}"

gcloud compute tpus tpu-vm scp --recurse --zone="$ZONE" $PROJECT_FLAG \
  --worker=all "$(dirname "$0")/.." "$TPU_NAME:$REMOTE_DIR"

EXTRA=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG \
  --worker=all --command="
    set -e
    cd $REMOTE_DIR
    [[ -d .venv ]] || (python3 -m venv .venv && .venv/bin/pip install -q \
      -r requirements.txt 'jax[tpu]' \
      -f https://storage.googleapis.com/jax-releases/libtpu_releases.html)
    VISGEN_DISTRIBUTED=1 .venv/bin/python -m visgen.main \
      --config=$CONFIG --workdir=$WORKDIR $EXTRA 2>&1 | tee -a run.log"
