"""What every part of a CoMD run shares: the config, the workdir, the mesh, the
training data's tokenizer and image processor, and how a model is built and asked."""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from comd_jax import config as config_lib
from comd_jax import sharding as shd
from comd_jax import stages as stages_lib


@dataclasses.dataclass(frozen=True)
class Job:
    config: object  # the run's ConfigDict
    workdir: str
    mesh: object
    recipe: str
    data: stages_lib.StageData
    tokenizer: object

    @classmethod
    def start(cls, config, workdir: str) -> "Job":
        """The mesh over this job's devices and the data's tokenizer (the offline world is built here)."""
        from transformers import AutoTokenizer

        mesh_cfg = config_lib.mesh_config(config.mesh)
        mesh = shd.make_mesh(mesh_cfg.shape(jax.device_count()))
        data = stages_lib.stage_data(config, workdir)
        return cls(config, workdir, mesh, mesh_cfg.recipe, data, AutoTokenizer.from_pretrained(data.tokenizer_dir))

    def model(self, model_cfg, params):
        """Our model over `params`, laid out by the job's sharding rules."""
        from comd_jax.models import build

        graphdef, abstract = build.abstract_model(model_cfg, shd.rules_for(self.recipe))
        return build.merge(graphdef, abstract, params)

    def answerer(self, model, progress: Optional[str] = None):
        """Greedy answers with the distillation's length and batch (`distill.answer_max_tokens`, `gen_batch`)."""
        from comd_jax.eval.answerer import GreedyAnswerer

        d = self.config.distill
        return GreedyAnswerer(model, self.tokenizer, self.data.image_processor, max_new_tokens=d.answer_max_tokens,
                              batch_size=d.gen_batch, progress=progress)
