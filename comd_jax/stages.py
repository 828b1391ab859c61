"""Data for the training stages: one table of source kinds feeding one pipeline.

`config.data.kind` picks the source: the offline synthetic world (built in the
workdir on first use), LLaVA JSON/JSONL files, or a TFDS dataset by name.
Each stage section names its split (world/tfds) or file (llava_json), its
template and its length buckets.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
from typing import Callable, Optional

import jax

from comd_jax.data import images, mixture, pipeline
from comd_jax.data.llava_json import LlavaJsonSource
from comd_jax.data.tfds_source import TfdsSource


HELDOUT_CAPTIONS = "heldout_captions"  # world only: captions of unseen scenes


@dataclasses.dataclass
class StageData:
    tokenizer_dir: str
    image_processor: images.ImageProcessorConfig
    source: Callable  # (split_or_file, image_folder) -> Source


def world_dir(workdir: str) -> str:
    """Where the offline world is built: WORKDIR/world, or a local cache when WORKDIR is remote
    (gs://): the world is regenerated identically from its seed on every host, and its TFDS
    files want a local disk."""
    if "://" not in workdir:
        return os.path.join(workdir, "world")
    return os.path.join(os.path.expanduser("~/.cache/comd_jax"), workdir.split("://", 1)[1].strip("/"), "world")


def world_spec(data_config):
    """The offline world a config's `data` section describes."""
    from comd_jax.data.synthetic import world

    d = data_config
    return world.WorldSpec(seed=d.world_seed, image_size=d.image_size, num_captions=d.num_captions,
                           num_instructions=d.num_instructions, num_heldout=d.num_heldout,
                           max_objects=d.max_objects)


def _world(config, workdir: str) -> StageData:
    from comd_jax.data.synthetic import builder, world

    d = config.data
    spec = world_spec(d)
    # Held-out captions come from a world with another seed: new scenes, same language.
    eval_spec = dataclasses.replace(spec, seed=spec.seed + 7919, num_captions=d.num_heldout, num_instructions=8,
                                    num_heldout=8)
    root = world_dir(workdir)
    # data.tokenizer: the world's text in a given model's tokens (the shipped teacher's), none trained.
    files = prepare_world_once(root, spec, eval_spec, vocab_size=d.vocab_size, in_workdir="://" not in workdir,
                               tokenizer_dir=_existing_tokenizer(d.tokenizer))

    def source(split, folder=None):
        if split == HELDOUT_CAPTIONS:
            return builder.source(eval_spec, world.CAPTIONS, os.path.join(root, "tfds_heldout"))
        return builder.source(spec, split, os.path.join(root, "tfds"))

    return StageData(files.tokenizer_dir, images.ImageProcessorConfig(size=spec.image_size), source)


def _existing_tokenizer(path: str):
    if path and not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"config.data.tokenizer={path!r}: no tokenizer.json there")
    return path or None


def prepare_world_once(root: str, spec, eval_spec, *, vocab_size: int, in_workdir: bool,
                       tokenizer_dir: str | None = None):
    """The offline world in `root` (and its held-out captions, `root/tfds_heldout`), built once
    per job; returns `prepare.prepare_world`'s files. Every process of the job calls it.

    `in_workdir` (WORKDIR/world on a POSIX workdir, one filesystem every host sees when CoMD
    rounds run): process 0 builds while the others wait at a barrier, then they call the same
    build, which only reads what is already there. A process that finds no world after the
    barrier (the workdir is a per-host local disk, which plain training stages allow) builds
    its own copy rather than failing: the world is a pure function of its spec, so every host
    still trains on the same examples, and no host reads a half-written world, since it either
    waited for process 0's finished one or builds its own. If process 0's build fails, every
    process raises its message at the barrier. Not `in_workdir` (a gs:// workdir:
    the world lives in each host's local cache): every process builds at once, nobody waits.

    Either way the build runs under a lock file in the host's temp dir, so processes that share
    a host (one task per GPU) never build one folder at the same time. The held-out captions
    are built here, eagerly (`num_heldout` examples, small), not on first use inside a
    training stage, where every process would build them at once."""
    from comd_jax import multihost
    from comd_jax.data.synthetic import builder, prepare

    def build():
        with _host_lock(root):
            files = prepare.prepare_world(root, spec, vocab_size=vocab_size, tokenizer_dir=tokenizer_dir)
            builder.build(eval_spec, os.path.join(root, "tfds_heldout"))
        return files

    if not in_workdir:  # the same on every process: all workdirs are paths, or all are URLs
        return build()
    files = None
    with multihost.writing("comd_jax.stages: offline world built"):  # a failure ends every process
        if multihost.is_writer():
            files = build()
    if files is None:
        files = build()
    return files


@contextlib.contextmanager
def _host_lock(root: str):
    """An exclusive lock between the processes of one host, keyed by the folder's path."""
    import fcntl
    import hashlib
    import tempfile

    key = hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:16]
    path = os.path.join(tempfile.gettempdir(), f"comd_jax-world-{key}.lock")
    with contextlib.ExitStack() as stack:
        try:
            fcntl.flock(stack.enter_context(open(path, "a")), fcntl.LOCK_EX)
        except OSError:  # no lock to be had (another user's file, no locks): go on unlocked, as before
            pass
        yield


def _from_init(config, field: str, file: str) -> str:
    """`config.data.<field>`, else the student checkpoint's own (`config.init_from`), as LLaVA users expect."""
    value = getattr(config.data, field) or ""
    init = config.init_from or ""
    if not value and init and ("://" in init or os.path.exists(os.path.join(init, file))):
        return init
    return value


def _image_processor(config) -> images.ImageProcessorConfig:
    path = _from_init(config, "image_processor", "preprocessor_config.json")
    if not path:
        raise ValueError("config.data.image_processor: set the directory holding preprocessor_config.json "
                         "(default: config.init_from's)")
    return images.ImageProcessorConfig.from_pretrained(path)


def _tokenizer(config) -> str:
    path = _from_init(config, "tokenizer", "tokenizer_config.json")
    if not path:
        raise ValueError("config.data.tokenizer: set the tokenizer directory (AutoTokenizer.from_pretrained; "
                         "default: config.init_from's)")
    return path


def _llava_json(config, workdir: str) -> StageData:
    return StageData(_tokenizer(config), _image_processor(config),
                     lambda path, folder=None: LlavaJsonSource(_existing(path), folder or None))


def _tfds(config, workdir: str) -> StageData:
    d = config.data
    return StageData(_tokenizer(config), _image_processor(config),
                     lambda split, folder=None: TfdsSource.from_name(d.name, split, data_dir=d.data_dir or None))


def _existing(path: str) -> str:
    if not path or not os.path.exists(path):
        raise FileNotFoundError(f"data file not found: {path!r} (set the stage's `data` field)")
    return path


SOURCES = {"world": _world, "llava_json": _llava_json, "tfds": _tfds}


def stage_data(config, workdir: str) -> StageData:
    kind = config.data.kind
    if kind not in SOURCES:
        raise ValueError(f"config.data.kind={kind!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[kind](config, workdir)


def _source(data: StageData, spec: str, image_folder):
    """A stage's `data`/`eval_data`: one split or file, or a mix of slices ("a[:256]+b")."""
    return mixture.resolve(spec, lambda name: data.source(name, image_folder))


def train_pipeline(data: StageData, section, tokenizer, num_image_tokens: int, seed: int):
    per_host = section.global_batch // jax.process_count()
    cfg = pipeline.PipelineConfig(batch_size=per_host, length_buckets=tuple(section.length_buckets),
                                  max_images=section.max_images, seed=seed, strict=section.strict_data)
    return pipeline.make_pipeline(_source(data, section.data, section.image_folder), template=section.template,
                                  tokenizer=tokenizer, image_config=data.image_processor,
                                  num_image_tokens=num_image_tokens, config=cfg)


def eval_batches(data: StageData, section, tokenizer, num_image_tokens: int,
                 max_batches: Optional[int] = None) -> Callable:
    """A factory of held-out batch iterables (a fixed, unshuffled prefix of the eval split):
    `section.eval_batches` batches, or `max_batches`."""
    limit = section.eval_batches if max_batches is None else max_batches

    def make():
        per_host = section.global_batch // jax.process_count()
        cfg = pipeline.PipelineConfig(batch_size=per_host, length_buckets=tuple(section.length_buckets),
                                      max_images=section.max_images, shuffle=False, num_epochs=1,
                                      drop_remainder=False, prefetch_batches=0)
        pipe = pipeline.make_pipeline(_source(data, section.eval_data, section.image_folder),
                                      template=section.template, tokenizer=tokenizer,
                                      image_config=data.image_processor, num_image_tokens=num_image_tokens,
                                      config=cfg)
        with pipe:
            for i, batch in enumerate(pipe):
                if i >= limit:
                    break
                yield batch
    return make
