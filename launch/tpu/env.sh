# Shared settings for launch/tpu/*.sh (sourced, not run). Override any of them in the environment:
#   PROJECT=my-proj ZONE=us-central2-b TPU_NAME=comd ACCELERATOR_TYPE=v4-32 \
#   WORKDIR=gs://my-bucket/comd/run1 CONFIG=configs/comd.py:paper launch/tpu/create.sh
# shellcheck shell=bash
set -euo pipefail

PROJECT="${PROJECT:-$(gcloud config get-value project 2>/dev/null)}"
ZONE="${ZONE:-us-central2-b}"
TPU_NAME="${TPU_NAME:-comd}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"        # v4-32, v5p-64, v5litepod-16, ...
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"  # v5e: v2-alpha-tpuv5-lite; v5p: v2-alpha-tpuv5; v6e: v2-alpha-tpuv6e
SPOT="${SPOT:-0}"                                  # 1: spot capacity through a queued resource
CONFIG="${CONFIG:-configs/comd.py}"
# Checkpoints must be visible to every worker (Orbax writes them collectively): a GCS bucket.
WORKDIR="${WORKDIR:-}"
TRAIN_ARGS="${TRAIN_ARGS:-}"                       # extra flags, e.g. --config.tune.total_steps=100
REMOTE_DIR="${REMOTE_DIR:-comd_jax}"               # the package's folder in each worker's home
LOG="${LOG:-comd_train.log}"                       # each worker's log, in its home

if [[ -z "$PROJECT" ]]; then
  echo "set PROJECT (or gcloud config set project ...)" >&2
  exit 2
fi
GCLOUD_TPU=(gcloud compute tpus tpu-vm --project="$PROJECT" --zone="$ZONE")
# shellcheck disable=SC2034  # used by the scripts that source this file
GCLOUD_QR=(gcloud compute tpus queued-resources --project="$PROJECT" --zone="$ZONE")

# Run a command on every worker of the slice, all at once.
on_all_workers() {
  "${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --worker=all --command="$1"
}

# Whether the run in WORKDIR has finished: it wrote its last file, WORKDIR/summary.json (training
# stages only, distill.rounds=0: the end of comd_jax.run) or WORKDIR/report/results.json (a CoMD
# run, which writes no summary.json). A gs:// WORKDIR is asked with `gcloud storage`; a path (the
# gcsfuse / NFS mount CoMD rounds need) is looked at on worker 0, where the run wrote it. An
# unreachable worker counts as not finished: the caller waits and asks again.
FINISHED_FILES=(summary.json report/results.json)
run_finished() {
  local f
  if [[ "$WORKDIR" == *://* ]]; then
    for f in "${FINISHED_FILES[@]}"; do
      if gcloud storage ls "$WORKDIR/$f" >/dev/null 2>&1; then return 0; fi
    done
    return 1
  fi
  local tests="" sep=""
  for f in "${FINISHED_FILES[@]}"; do
    tests+="$sep test -e '$WORKDIR/$f'"
    sep=" ||"
  done
  # From where train.sh starts the run, for a relative WORKDIR.
  "${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --worker=0 --command="cd ~/$REMOTE_DIR 2>/dev/null;$tests" \
    >/dev/null 2>&1 || return 1
}
