#!/usr/bin/env bash
# Cloud TPU pod slice: run the SAME command on every worker; jax.distributed.initialize() picks up the
# TPU environment (t2ijax calls it when TPU_WORKER_HOSTNAMES lists more than one host).
# The repository must already be checked out and installed (pip install -e '.[tpu]') at $REPO_DIR on every worker.
# Usage:
#   TPU_NAME=my-v5p-64 ZONE=us-east5-a launch/tpu_pod.sh train \
#       --config=configs/txt2img_shapes.py:base --workdir=gs://my-bucket/runs/txt2img
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
PROJECT_FLAG=${PROJECT:+--project=$PROJECT}
REPO_DIR="${REPO_DIR:-~/t2ijax}"
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" $PROJECT_FLAG --worker=all \
  --command="cd $REPO_DIR && .venv/bin/python -m t2ijax$ARGS"
