"""Build what the server needs from an experiment config: the teacher model
(random, a transformers directory, or one of our Orbax checkpoints), its
tokenizer and image processor, and the engine — then serve.

Tokenizer and image processor come from the same place training takes them
(`comd_jax.stages.stage_data`): the offline world in WORKDIR/world for
`config.data.kind == 'world'` (built on first use, reused after), else
`config.data.tokenizer` / `config.data.image_processor`. The prompt template
is the instruction-tuning stage's (`config.tune.template`, else vicuna_v1).
"""
from __future__ import annotations

from typing import Optional


from comd_jax import config as config_lib
from comd_jax import sharding as shd
from comd_jax.checkpoints import load_model
from comd_jax.serve.engine import Engine, EngineConfig
from comd_jax.serve.prompts import Limits, Prompter


def engine_from_config(config, workdir: str, checkpoint: Optional[str] = None, *,
                       engine_config: EngineConfig = EngineConfig(), limits: Limits = Limits()):
    """(Engine, Prompter) for `config.teacher`."""
    from comd_jax import experiment
    from comd_jax.job import mesh_of, tokenizer_and_processor

    config = experiment.validated(config)
    model_cfg = config_lib.model_config(config.teacher)
    mesh, recipe = mesh_of(config)
    tokenizer, image_processor = tokenizer_and_processor(config, workdir, checkpoint)
    model = load_model(model_cfg, checkpoint, mesh, recipe, config.seed)
    template = config.tune.template if "tune" in config else "vicuna_v1"
    prompter = Prompter(tokenizer, image_processor, template=template,
                        image_token_id=model.cfg.image_token_id, num_image_tokens=model.cfg.num_image_tokens,
                        limits=limits)
    engine = Engine(model, tokenizer, engine_config, mesh=mesh, rules=shd.rules_for(recipe),
                    seed=config.seed)
    return engine, prompter


def limits_of(config) -> Limits:
    """The server's request limits from `config.serve`.
    A LLaVA-1.5 prompt alone is 576 image tokens, so the paper preset raises them."""
    from comd_jax import experiment

    return experiment.validated(config).serve


def serve(config, *, host: str = "127.0.0.1", port: int = 8000, checkpoint: Optional[str] = None,
          api_key: Optional[str] = None, workdir: str = "workdir", model_name: str = "comd-teacher",
          warm_up: bool = False) -> None:
    """What `python -m comd_jax.serve` calls: load, (warm up,) then serve until SIGINT/SIGTERM."""
    from comd_jax.serve import server, warmup

    limits = limits_of(config)
    engine_config = EngineConfig(max_seq_len=limits.max_prompt_tokens + limits.max_output_tokens)
    engine, prompter = engine_from_config(config, workdir, checkpoint, engine_config=engine_config, limits=limits)
    if warm_up:
        warmup.warm_up(engine, max_prompt_tokens=limits.max_prompt_tokens, max_images=limits.max_images)
    with warmup.CompileCounter() as compiles:  # since the warm-up (or since start-up, without one)
        app = server.create_app(engine, prompter, model_name=model_name, api_key=api_key, compiles=compiles,
                                warmed=warm_up)
        server.run(app, host=host, port=port)
