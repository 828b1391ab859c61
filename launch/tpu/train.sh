#!/usr/bin/env bash
# Start training on every worker at once (the same command everywhere; JAX forms one job
# from the TPU metadata). Detached with nohup: closing this terminal does not stop it.
# Restarting with the same WORKDIR resumes from the latest checkpoint by itself.
# Usage: WORKDIR=gs://bucket/run CONFIG=configs/comd.py:paper TRAIN_ARGS='--config.init_from=...' launch/tpu/train.sh
source "$(dirname "$0")/env.sh"

if [[ -z "$WORKDIR" ]]; then
  echo "set WORKDIR (a gs:// path every worker can write, e.g. gs://my-bucket/comd/run1)" >&2
  exit 2
fi
# An earlier run started by this script is stopped first (its pid file), so a relaunch never
# runs two jobs on one slice.
on_all_workers "if [ -f ~/$LOG.pid ]; then kill \$(cat ~/$LOG.pid) 2>/dev/null || true; sleep 5; fi; \
  cd ~/$REMOTE_DIR && nohup python3 launch/train.py --config='$CONFIG' --workdir='$WORKDIR' \
     --distributed=tpu $TRAIN_ARGS > ~/$LOG 2>&1 < /dev/null & echo \$! > ~/$LOG.pid; \
  echo \"started on \$(hostname)\""
