#!/usr/bin/env bash
# Copy this checkout to every worker and install it there with JAX for TPU.
# The copy is `git archive HEAD` (committed code only), so every worker runs the same commit.
# Usage: launch/tpu/install.sh
source "$(dirname "$0")/env.sh"

repo="$(git -C "$(dirname "$0")/../.." rev-parse --show-toplevel)"
archive="$(mktemp -d)/comd_jax.tar.gz"
git -C "$repo" archive --format=tar.gz -o "$archive" HEAD
"${GCLOUD_TPU[@]}" scp "$archive" "$TPU_NAME":comd_jax.tar.gz --worker=all
# gcsfs + google-cloud-storage: gs:// workdirs (etils/Orbax metadata and TensorBoard events).
on_all_workers "set -e; rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR \
  && tar -xzf ~/comd_jax.tar.gz -C ~/$REMOTE_DIR \
  && python3 -m pip install -q -U pip \
  && python3 -m pip install -q -U 'jax[tpu]' gcsfs google-cloud-storage \
  && python3 -m pip install -q -e ~/$REMOTE_DIR \
  && python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].device_kind)'"
