#!/usr/bin/env bash
# Spot runs: keep the job going through preemptions. Every INTERVAL seconds, check the slice;
# when it was preempted (queued resource no longer ACTIVE), delete it, queue a new one, reinstall
# and start training again with the same WORKDIR, which resumes from the latest checkpoint.
# Stops once the run has finished: WORKDIR/summary.json (training stages only) or
# WORKDIR/report/results.json (a CoMD run, distill.rounds > 0) exists (run_finished, env.sh).
# Usage: SPOT=1 WORKDIR=gs://...  (or a gcsfuse mount, /mnt/BUCKET/..., for CoMD rounds) CONFIG=... launch/tpu/relaunch.sh
source "$(dirname "$0")/env.sh"
here="$(dirname "$0")"
INTERVAL="${INTERVAL:-300}"

if [[ "$SPOT" != "1" ]]; then
  echo "relaunch.sh is for SPOT=1 runs" >&2
  exit 2
fi
while true; do
  state="$("${GCLOUD_QR[@]}" describe "$TPU_NAME" --format='value(state.state)' 2>/dev/null || echo MISSING)"
  case "$state" in
    ACTIVE)
      if run_finished; then
        echo "training finished; delete the slice with launch/tpu/delete.sh"
        exit 0
      fi ;;
    ACCEPTED|WAITING_FOR_RESOURCES|PROVISIONING|CREATING) ;;  # still coming up: wait
    *)  # SUSPENDED (preempted), FAILED, MISSING, ...
      echo "$(date +%H:%M:%S) slice is $state: recreating"
      if [[ "$state" != "MISSING" ]]; then "$here/delete.sh"; fi
      "$here/create.sh" && "$here/install.sh" && "$here/train.sh" || echo "relaunch failed; retrying" ;;
  esac
  sleep "$INTERVAL"
done
