"""load_pretrained onto a mesh of 8 simulated CPU devices: the weights really land
in shards and the logits still match transformers.

The device count must be fixed before jax starts, so the check runs in a fresh
interpreter and the rest of the suite keeps its single device.
"""
import json
import os
import subprocess
import sys

import numpy as np

import hf_tiny as H
from tests._paths import REPO


SCRIPT = r"""
import json, sys
import numpy as np
import jax
from comd_jax import load_pretrained
from comd_jax.sharding import make_mesh

directory, inputs = sys.argv[1], np.load(sys.argv[2])
assert len(jax.devices()) == 8
out = {}
for name, shape, recipe in (("fsdp8", (1, 8, 1), "fsdp"), ("fsdp_tp222", (2, 2, 2), "fsdp_tp")):
    model = load_pretrained(directory, mesh=make_mesh(shape), recipe=recipe)
    logits = np.asarray(model.logits(inputs["ids"], inputs["pixels"], inputs["mask"]))
    ref = inputs["ref"]
    embed = model.text.embed[...]
    out[name] = {"err": float(np.abs(logits - ref).max() / np.abs(ref).max()),
                 "devices": len(embed.sharding.device_set),
                 "embed_shard": list(embed.addressable_shards[0].data.shape),
                 "mlp_shard": list(model.text.layers.gate.kernel[...].addressable_shards[0].data.shape)}
print("RESULT=" + json.dumps(out))
"""


def test_load_onto_eight_device_mesh(tmp_path):
    ref = H.llava(61, H.llama_kwargs(), H.clip_vision_kwargs())
    ref.save_pretrained(tmp_path / "llava")
    ids, mask, pixels = H.llava_batch(H.PATCHES)
    np.savez(tmp_path / "inputs.npz", ids=ids, mask=mask, pixels=pixels,
             ref=H.torch_logits(ref, ids, mask, pixels))
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "llava"), str(tmp_path / "inputs.npz")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.split("RESULT=")[-1])
    # embed [vocab 96, hidden 32]; gate kernel [layers 2, hidden 32, mlp 64].
    expected = {"fsdp8": ([96, 4], [2, 4, 64]), "fsdp_tp222": ([48, 16], [2, 16, 32])}
    for name, (embed_shard, mlp_shard) in expected.items():
        got = result[name]
        assert got["err"] < 1e-4, (name, got)
        assert got["devices"] == 8 and got["embed_shard"] == embed_shard and got["mlp_shard"] == mlp_shard, got
