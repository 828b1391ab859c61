#!/usr/bin/env bash
# Follow the training log of one worker (default 0: the one that prints progress and metrics).
# Usage: launch/tpu/logs.sh [WORKER]
source "$(dirname "$0")/env.sh"

"${GCLOUD_TPU[@]}" ssh "$TPU_NAME" --worker="${1:-0}" --command="tail -n 100 -F ~/$LOG"
