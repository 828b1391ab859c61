#!/usr/bin/env bash
# Delete the slice (and its queued resource when SPOT=1). Checkpoints in WORKDIR stay.
# Usage: [SPOT=1] launch/tpu/delete.sh
source "$(dirname "$0")/env.sh"

if [[ "$SPOT" == "1" ]]; then
  "${GCLOUD_QR[@]}" delete "$TPU_NAME" --force --quiet
else
  "${GCLOUD_TPU[@]}" delete "$TPU_NAME" --quiet
fi
