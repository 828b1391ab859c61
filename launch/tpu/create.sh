#!/usr/bin/env bash
# Create the TPU VM or pod slice ACCELERATOR_TYPE named TPU_NAME.
#   SPOT=0: on-demand, `tpu-vm create` (returns when the slice is up).
#   SPOT=1: spot capacity through a queued resource; waits until it is ACTIVE.
# Usage: PROJECT=... ZONE=... ACCELERATOR_TYPE=v4-32 [SPOT=1] launch/tpu/create.sh
source "$(dirname "$0")/env.sh"

if [[ "$SPOT" != "1" ]]; then
  "${GCLOUD_TPU[@]}" create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
  exit 0
fi

"${GCLOUD_QR[@]}" create "$TPU_NAME" --node-id="$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
  --runtime-version="$RUNTIME_VERSION" --spot
echo "queued $TPU_NAME ($ACCELERATOR_TYPE, spot); waiting for capacity..."
while true; do
  state="$("${GCLOUD_QR[@]}" describe "$TPU_NAME" --format='value(state.state)')"
  case "$state" in
    ACTIVE) echo "ACTIVE"; break ;;
    FAILED|SUSPENDED) echo "queued resource is $state; delete it (launch/tpu/delete.sh) and retry" >&2; exit 1 ;;
    *) echo "  $(date +%H:%M:%S) $state"; sleep 30 ;;
  esac
done
