"""CoMD experiment config.

Lists are tuples so every field can be overridden on the command line,
e.g. --config.stages="('tune',)". Every key, its default and what it does: docs/config.md.

Launch (offline default):   python launch/train.py --config=configs/comd.py
Presets via the argument:   --config=configs/comd.py:smoke | :paper | :ablation | :teacher

- default: the offline synthetic world, a tiny student and the shipped world teacher (4x its
  parameters, comd_jax/assets/world_teacher), served from distill.teacher_checkpoint; CPU-sized.
- smoke: the smallest size that still exercises every phase, with a tiny teacher of its own (CI).
- paper: Vicuna-7B + CLIP ViT-L/14-336 + mlp2x_gelu student, LLaVA-1.5-13B teacher,
  LLaVA-1.5 recipes (stage 1: lr 1e-3, batch 256; tuning: lr 2e-5, batch 128, cosine, 3% warmup).
- ablation: CoMD vs plain distillation over 5 seeds with the shipped teacher, on its world (24000
  instructions, 2700 held-out; outside the default run's 15-minute budget).
- teacher: the shipped world teacher rebuilt from scratch, exported and scored (world_teacher_out).

LoRA instead of full LLM tuning (when memory is short):
  --config.model.lora_rank=128 --config.model.lora_alpha=256 \
  --config.tune.trainable='("text/.*lora_.*", "projector/.*")'
  save_pretrained merges the adapters; comd_jax.convert.adapters.save_lora writes them alone (PEFT layout).

Memory check before renting a pod:
  python -m comd_jax.bench.compile_check --config=configs/comd.py:paper --topology=v5p-8
"""
import ml_collections

from comd_jax.distill.teacher_manifest import SHIPPED as WORLD_TEACHER

VICUNA_7B = dict(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_layers=32, num_heads=32,
                 num_kv_heads=32, rms_norm_eps=1e-5, max_position_embeddings=4096, rope=dict(theta=10000.0))
LLAMA_13B = dict(vocab_size=32064, hidden_size=5120, intermediate_size=13824, num_layers=40, num_heads=40,
                 num_kv_heads=40, rms_norm_eps=1e-5, max_position_embeddings=4096, rope=dict(theta=10000.0))
CLIP_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_layers=24, num_heads=16, image_size=336,
                    patch_size=14)


def _model(text, vision, *, image_token_id, projector="mlp2x_gelu", dtype="float32", param_dtype="float32",
           remat=False):
    return ml_collections.ConfigDict(dict(
        text=dict(text), vision=dict(vision), projector=projector, image_token_id=image_token_id,
        feature_layer=-2, select_strategy="default", dtype=dtype, param_dtype=param_dtype, remat=remat,
        # LoRA on the LLM's linear layers (0 = off); with it, train e.g. ("text/.*lora_.*", "projector/.*").
        lora_rank=0, lora_alpha=16.0, lora_targets=("q", "k", "v", "o", "gate", "up", "down")))


def _stage(**kw):
    base = dict(
        # optimizer and schedule (optax): warmup then cosine, AdamW, clipping
        learning_rate=2e-5, warmup_ratio=0.03, total_steps=100, schedule="cosine", end_lr_ratio=0.0,
        weight_decay=0.0, grad_clip=1.0,
        trainable=("projector/.*", "text/.*"),  # regexes over parameter paths; the rest is frozen
        global_batch=8, grad_accum_steps=1,
        # data: split (world/tfds) or file (llava_json) for training and held-out evaluation
        template="vicuna_v1", data="instructions", eval_data="heldout", image_folder="",
        # the offline world's instructions are 63-125 tokens with 16 image tokens (data.check)
        length_buckets=(80, 128), max_images=1, strict_data=False,
        # cadences
        log_every=10, eval_every=0, eval_batches=4, save_every=50, keep_checkpoints=2,
        # 0: every position; 8: the last block and the LM head at target positions only (more compiles)
        head_capacity_steps=0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _world_data(**kw):
    base = dict(kind="world", world_seed=0, image_size=32, num_captions=2000, num_instructions=4000,
                num_heldout=450, vocab_size=1024, max_objects=5,  # objects per scene: 1..max_objects
                # for kind=llava_json / tfds: tokenizer and image-processor directories, TFDS name
                tokenizer="", image_processor="", name="", data_dir="")
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _distill(**kw):
    base = dict(
        rounds=4,  # 0: only the training stages (no teacher, no rounds)
        pool_size=256,  # initial train/assessment pool: the first N world instructions
        judge="reference",  # reference (ground truth) | llm (pairwise judge through the endpoint)
        augmentor="procedural",  # procedural (new world scenes) | llm (the teacher as instruction creator)
        threshold=1.0, easy_keep=0.1, student_margin=1.0,  # difficult selection
        competitive=True,  # a student answer the assessor prefers becomes the target
        seed_policy="hard",  # hard: CoMD; random: plain distillation (same calls and steps)
        seeds_per_round=0,  # 0: the selection decides; N: exactly N augmentation seeds a round, either policy
        oracle_answers=False,  # diagnostic (offline world): the world's answers replace the teacher's in the pool
        teacher_floor=0.0,  # 0: off; else teacher answers scored below it leave training
        per_seed=2, max_new_per_round=128, answer_max_tokens=32, concurrency=8, gen_batch=16,
        assess_chunk=64,  # student answers per assessment batch (verdicts are saved per item)
        teacher_url="",  # empty: start our server on teacher_checkpoint; else any OpenAI-compatible URL
        # a transformers directory or one of our checkpoints, served by our server; "": trained in the run
        teacher_checkpoint="",
        # the judge's endpoint and model ("": the teacher's); its key only from the variable named here
        judge_url="", judge_model="", judge_api_key_env="OPENAI_API_KEY",
        judge_max_tokens=256,  # the judge's reply: two score lines and the reasons (within our server's limit)
        # your pool (data.kind llava_json / tfds): LLaVA JSON or JSONL, its image folder ("": the file's)
        pool_data="", image_folder="",
        # the teacher's model name, and the variable holding its key (a bearer token; unset: none)
        teacher_model="comd-teacher", teacher_api_key_env="COMD_TEACHER_API_KEY",
        # white-box signals from the teacher endpoint (comd_jax/train/kd.py): none (answers only, CoMD) |
        # topk (alpha * KL(teacher top-k || student) on the teacher's answers) | on_policy (the student's
        # own assessed answers, scored by the teacher, reverse KL); k <= 20, temperature T; the round's
        # loss is kd_ce_weight * cross-entropy + kd_alpha * KL (ce weight 0: the teacher's distribution alone)
        kd="none", kd_alpha=1.0, kd_temperature=1.0, kd_top_k=20, kd_ce_weight=1.0,
        eval_limit=270)  # held-out examples scored per round (30 per skill)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _eval(**kw):
    """Benchmarks the CoMD run scores: the student before round 0 and after every round, the teacher
    once through its endpoint (WORKDIR/eval/<who>/<benchmark>.json, then the report)."""
    base = dict(
        benchmarks=("world",),  # scienceqa | llava_bench | world (the offline world's held-out split)
        # ScienceQA as LLaVA evaluates it: llava_test_CQM-A.json, ScienceQA's problems.json, the test images
        scienceqa_questions="", scienceqa_problems="", scienceqa_images="",
        # LLaVA-Bench (In-the-Wild): questions, GPT-4 answers, context, images; judged via distill.judge_url
        llava_bench_questions="", llava_bench_answers="", llava_bench_context="", llava_bench_images="",
        limit=0,  # 0: every question; N: the first N (a quick look)
        max_new_tokens=0,  # 0: distill.answer_max_tokens
        # world: held-out examples the image-reliance probe reads (0: the distill.eval_limit scored ones)
        reliance_examples=0)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _serve(**kw):
    """Our teacher server's request limits (comd_jax/serve/prompts.py: Limits); a request past one is a 400."""
    base = dict(max_prompt_tokens=768, max_output_tokens=256, max_images=4, max_n=8,
                max_top_logprobs=20)  # top_logprobs: k of the most likely tokens per position (<= 20)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _caption_stage(**kw):
    return _stage(**{"template": "plain", "data": "captions", "eval_data": "heldout_captions",
                     "length_buckets": (48,), **kw})  # captions: 23-43 tokens at 8 px


def _offline(text_width, layers, vision_width, vision_layers, patch_size=8):
    text = dict(vocab_size=1024, hidden_size=text_width, intermediate_size=text_width * 4 // 1, num_layers=layers,
                num_heads=max(text_width // 32, 1), num_kv_heads=max(text_width // 64, 1),
                max_position_embeddings=512, tie_word_embeddings=False, rope=dict(theta=10000.0))
    vision = dict(hidden_size=vision_width, intermediate_size=vision_width * 4, num_layers=vision_layers,
                  num_heads=max(vision_width // 32, 1), image_size=32,
                  # 8 px: 16 image tokens, but models never read colours; 4 px: 64, and they do
                  patch_size=patch_size)
    return _model(text, vision, image_token_id=4)


def get_config(arg: str = "default") -> ml_collections.ConfigDict:
    if arg not in PRESETS:
        raise ValueError(f"unknown preset {arg!r}; choose one of {sorted(PRESETS)}")
    config = PRESETS[arg]()
    config.preset = arg
    return config


def _default():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # 4 px patches (64 image tokens): with 8 px ones no model read colours from the pixels.
    c.model = _offline(128, 4, 64, 2, patch_size=4)  # student
    # the shipped world teacher's shape (~4x the student): a given model, as a user's LLaVA-13B is
    c.teacher = _offline(256, 6, 128, 3, patch_size=4)
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, recipe="fsdp"))
    # The world in the teacher's tokens: its tokenizer, not one trained on this world's text.
    c.data = _world_data(tokenizer=WORLD_TEACHER)
    # starting weights: a transformers directory ("" = random), plus CLIP for a plain Llama/Vicuna
    c.init_from, c.init_vision_from, c.init_required = "", "", False
    # in the workdir, so a resumed run loads what the killed one compiled; "" = off
    c.compilation_cache_dir = "compilation_cache"
    c.world_teacher_out = ""  # the teacher preset's: where its trained teacher is exported ("" = no export)
    # no pretrained backbones offline: stage 0 trains everything on captions, then the paper's two stages
    c.stages = ("stage0", "stage1", "tune")
    c.stage0 = _caption_stage(learning_rate=1e-3, trainable=(".*",), global_batch=16, total_steps=300,
                              length_buckets=(96,))  # captions: 71-91 tokens with 64 image tokens
    c.stage1 = _caption_stage(learning_rate=1e-3, trainable=("projector/.*",), global_batch=16, total_steps=50,
                              length_buckets=(96,))
    c.tune = _stage(learning_rate=1e-3, global_batch=16, total_steps=300,
                    length_buckets=(128, 176))  # instructions: 111-173 tokens
    # a teacher trained in the run instead (distill.teacher_checkpoint="", the smoke preset's)
    c.teacher_stages = ("teacher_pretrain", "teacher_tune")
    c.teacher_seed = -1  # -1: config.seed; the ablation fixes it so that every seed shares one teacher
    c.teacher_pretrain = _caption_stage(learning_rate=1e-3, trainable=(".*",), global_batch=16, total_steps=150,
                                        length_buckets=(96,))
    c.teacher_tune = _stage(learning_rate=1e-3, trainable=(".*",), global_batch=16, total_steps=320,
                            length_buckets=(128, 176))
    # Each round's instruction tuning of the student on the train pool.
    # 120 steps, not 60 (with distill.easy_keep 0.3; docs/notes/2026-12-07-ci-packaging-levers.md)
    c.round_tune = _stage(learning_rate=3e-4, global_batch=16, total_steps=120, data="", eval_data="",
                          length_buckets=(128, 176))
    # Every held-out example scored every round (50 per skill).
    # easy_keep 0.3, not 0.1: with 120 round-tuning steps, round 3 at 49.96 against 46.73 (one seed)
    c.distill = _distill(teacher_checkpoint=WORLD_TEACHER, eval_limit=450, easy_keep=0.3)
    c.eval = _eval()
    c.serve = _serve()
    return c


def _smoke():
    c = _default()
    c.model = _offline(64, 2, 32, 1)
    c.teacher = _offline(128, 2, 64, 1)
    # A tiny teacher of its own, trained in seconds, on a world with its own tokenizer; 8 px patches.
    c.distill.teacher_checkpoint, c.data.tokenizer = "", ""
    for name in ("stage0", "stage1", "teacher_pretrain"):
        c[name].length_buckets = (48,)  # captions: 23-43 tokens with 16 image tokens
    for name in ("tune", "teacher_tune", "round_tune"):
        c[name].length_buckets = (80, 128)  # instructions: 63-125 tokens
    c.data.update(dict(num_captions=64, num_instructions=64, num_heldout=16))
    # The teacher gets enough steps to answer in words (an untrained one emits only specials).
    for name, steps in (("stage0", 4), ("stage1", 2), ("tune", 4), ("teacher_pretrain", 4), ("teacher_tune", 40),
                        ("round_tune", 2)):
        c[name].update(dict(total_steps=steps, global_batch=4, log_every=2, save_every=2, eval_batches=2))
    # easy_keep and per_seed high enough that augmentation grows several entries to resume inside.
    c.distill.update(dict(rounds=1, pool_size=12, per_seed=2, easy_keep=0.5, max_new_per_round=8,
                          answer_max_tokens=8, gen_batch=4, eval_limit=18, assess_chunk=4))
    return c


def _paper():
    c = ml_collections.ConfigDict()
    c.seed = 0
    # Vicuna-7B + CLIP ViT-L/14-336 + mlp2x_gelu; <image> is id 32000 in LLaVA-1.5's tokenizer.
    c.model = _model(VICUNA_7B, CLIP_L14_336, image_token_id=32000, dtype="bfloat16", param_dtype="float32",
                     remat=True)
    c.teacher = _model(LLAMA_13B, CLIP_L14_336, image_token_id=32000, dtype="bfloat16", param_dtype="bfloat16")
    c.mesh = ml_collections.ConfigDict(dict(data=1, fsdp=-1, tensor=1, recipe="fsdp"))
    # The user's LLaVA data: set these (or override on the command line).
    c.data = _world_data(kind="llava_json", tokenizer="", image_processor="")
    # a LLaVA-1.5-7B directory, or Vicuna-7B + init_vision_from (CLIP); required: stage 1 freezes both
    c.init_from, c.init_vision_from, c.init_required = "", "", True
    # Inside the workdir: a pod job resumed after a preemption skips its minutes-long compiles.
    c.compilation_cache_dir = "compilation_cache"
    c.world_teacher_out = ""  # only the teacher preset exports one
    c.teacher_seed = -1  # an in-run teacher only; the paper's is given
    c.stage1 = _stage(learning_rate=1e-3, global_batch=256, trainable=("projector/.*",), template="plain",
                      data="", eval_data="", length_buckets=(2048,), total_steps=2180,  # 558K captions / 256
                      save_every=500)
    c.tune = _stage(learning_rate=2e-5, global_batch=128, grad_accum_steps=16, length_buckets=(1024, 2048),
                    data="", eval_data="", total_steps=5200, save_every=500)
    # init_from is instruction-tuned already; --config.stages="('stage1', 'tune')" tunes first
    c.stages = ("stage1",)
    # each round: LLaVA-1.5's tuning recipe for about one epoch of a 10K pool growing 1K a round
    c.round_tune = _stage(learning_rate=2e-5, global_batch=128, grad_accum_steps=16, length_buckets=(1024, 2048),
                          data="", eval_data="", total_steps=90, save_every=30)
    c.distill = _distill(rounds=4, pool_size=10000, judge="llm", augmentor="llm", per_seed=1,
                         max_new_per_round=1000, answer_max_tokens=512, concurrency=32, gen_batch=64,
                         assess_chunk=256, teacher_model="llava-v1.5-13b", judge_max_tokens=512)
    # --config.eval.benchmarks="('scienceqa',)" with the three scienceqa_* files (docs/byo.md).
    c.eval = _eval(benchmarks=(), max_new_tokens=128)
    # LLaVA-1.5: 576 image tokens a prompt, a 4096-token context; answers (512) and verdicts (judge_max_tokens).
    c.serve = _serve(max_prompt_tokens=3072, max_output_tokens=1024)
    return c


def _teacher_world(c):
    """The shipped teacher's world (its world_teacher.json): 24000 instructions, 2700 held-out."""
    c.data.num_instructions = 24000
    c.data.num_heldout = 2700
    c.distill.eval_limit = 2700
    return c


def _ablation():
    """CoMD vs plain distillation over 5 seeds, with the shipped teacher as the given model:
    `python -m comd_jax.distill.ablation --config=configs/comd.py:ablation --workdir=DIR`."""
    c = _teacher_world(_default())
    # the same teacher calls for both variants: 48 augmentation seeds a round (CoMD: hard ones first)
    c.distill.seeds_per_round = 48
    # 150 held-out examples per skill, the same for every run (the 60-minute budget for 5 seeds).
    c.distill.eval_limit = 1350
    c.eval.reliance_examples = 64  # 4 batches: every run probes the student after every round
    # the recipe its 5-seed table in docs/results.md measured
    c.round_tune.total_steps, c.distill.easy_keep = 60, 0.1
    c.ablation = ml_collections.ConfigDict(dict(
        seeds=(0, 1, 2, 3, 4),
        # variant name -> config overrides; plain: no assessment-driven augmentation, no competitive targets
        variants=dict(comd=dict(), plain=dict(distill=dict(seed_policy="random", competitive=False)))))
    return c


def _kd_ablation():
    """CoMD with the teacher's white-box signals (distill.kd topk, on_policy) against CoMD and plain
    distillation: the ablation's seeds, teacher, augmentation calls and steps (the scoring calls are
    the KD variants' own): `python -m comd_jax.distill.ablation --config=configs/comd.py:kd_ablation
    --workdir=DIR`. The paired rows compare each variant with CoMD, seed by seed."""
    c = _ablation()
    c.ablation.variants = ml_collections.ConfigDict(dict(
        comd=dict(), topk=dict(distill=dict(kd="topk")), on_policy=dict(distill=dict(kd="on_policy")),
        plain=dict(distill=dict(seed_policy="random", competitive=False))))
    return c


def _kd_levers():
    """The KD term's weight and temperature, and topk without the cross-entropy (kd_ce_weight 0),
    against CoMD and topk at alpha 1, T 1, on seeds 0-1 of the kd ablation (its runs resume where
    they finished: point --workdir at the same DIR):
    `python -m comd_jax.distill.ablation --config=configs/comd.py:kd_levers --workdir=DIR`."""
    c = _kd_ablation()
    c.ablation.seeds = (0, 1)
    c.ablation.variants = ml_collections.ConfigDict(dict(
        comd=dict(), topk=dict(distill=dict(kd="topk")),
        topk_a3=dict(distill=dict(kd="topk", kd_alpha=3.0)),
        topk_t2=dict(distill=dict(kd="topk", kd_temperature=2.0)),
        topk_a3t2=dict(distill=dict(kd="topk", kd_alpha=3.0, kd_temperature=2.0)),
        topk_ce0=dict(distill=dict(kd="topk", kd_ce_weight=0.0))))
    return c


def _kd_recipe():
    """CoMD against CoMD + topk on the default preset's round recipe (120 tuning steps a round,
    easy_keep 0.3) instead of the ablation's (60, 0.1): the kd ablation's seeds, teacher, held-out
    examples and augmentation calls; `python -m comd_jax.distill.ablation
    --config=configs/comd.py:kd_recipe --workdir=DIR`."""
    c = _kd_ablation()
    default = _default()  # its recipe, whatever the default becomes
    c.round_tune.total_steps, c.distill.easy_keep = default.round_tune.total_steps, default.distill.easy_keep
    c.ablation.variants = ml_collections.ConfigDict(dict(comd=dict(), topk=dict(distill=dict(kd="topk"))))
    return c


def _teacher():
    """The world teacher alone, from scratch (its world, 4 px patches, 300 + 1800 steps at 3e-4,
    seed 0): `python launch/train.py --config=configs/comd.py:teacher --workdir=DIR`. The run
    then exports its last stage's checkpoint to `world_teacher_out` as the transformers directory
    the package ships, and scores it (comd_jax.distill.world_teacher)."""
    c = _teacher_world(_default())
    # Trained here, on a tokenizer the world trains on its own text (the one the package ships).
    c.distill.teacher_checkpoint, c.data.tokenizer = "", ""
    c.teacher_pretrain.total_steps = 300
    c.teacher_tune.total_steps = 1800  # 1.2 epochs: 1200 (0.8) scored 53.1 with a gap of +0.190
    # at 1e-3 (the student's rate) the teacher never used the image (docs/notes/2026-12-06-world-teacher.md)
    c.teacher_pretrain.learning_rate = 3e-4
    c.teacher_tune.learning_rate = 3e-4
    c.model = ml_collections.ConfigDict(c.teacher.to_dict())
    c.stages = tuple(c.teacher_stages)
    c.distill.rounds = 0
    c.eval.reliance_examples = 0  # the teacher's gap on all 2700 held-out examples
    # Where the run exports the trained teacher and its scores (the package's copy; "" = not at all).
    c.world_teacher_out = WORLD_TEACHER
    return c


PRESETS = {"default": _default, "smoke": _smoke, "paper": _paper, "ablation": _ablation, "kd_ablation": _kd_ablation,
           "kd_levers": _kd_levers, "kd_recipe": _kd_recipe, "teacher": _teacher}
