"""Everything the offline world needs on disk, in one call.

  python -m comd_jax.data.synthetic.prepare --out=/tmp/world [--seed=0] [--image-size=32]

writes out/tfds (the TFDS dataset), out/llava (LLaVA JSON + PNG), out/tokenizer
(transformers tokenizer with chat template) and out/image_processor
(preprocessor_config.json). Reruns reuse what exists and write nothing
when it is all there.

out/world_spec.json records the world the folder holds. A rerun with other
split sizes extends it (examples are index-stable, so the first N stay the
same, and the tokenizer is kept, since checkpoints beside it use its ids); a
rerun whose examples would differ (seed, image size, objects, skills,
vocabulary) is refused with a message naming the field, rather than mixing
TFDS splits of one world with the LLaVA files of another.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from comd_jax import atomic
from comd_jax.data.images import ImageProcessorConfig
from comd_jax.data.synthetic import export, tokenizer, world


@dataclasses.dataclass(frozen=True)
class WorldFiles:
    tfds_dir: str  # the prepared builder folder (TfdsSource.from_directory)
    llava_json: dict[str, str]  # split -> JSON file; images beside it
    tokenizer_dir: str
    image_processor_dir: str


SPEC_FILE = "world_spec.json"
# What the examples (and the tokenizer's ids) depend on; the split sizes only say how many.
CONTENT_FIELDS = ("seed", "image_size", "max_objects", "skills", "vocab_size")


def prepare_world(
    out_dir: str, spec: world.WorldSpec = world.WorldSpec(), *, vocab_size: int = 1024,
    tokenizer_dir: str | None = None,
) -> WorldFiles:
    """The world's files in `out_dir`, built once. With `tokenizer_dir` (a given model's
    tokenizer, e.g. the shipped world teacher's) the world trains none of its own."""
    from comd_jax.data.synthetic import builder  # TFDS import only when building it

    wanted = json.loads(json.dumps({**dataclasses.asdict(spec), "vocab_size": vocab_size}))
    spec_file = os.path.join(out_dir, SPEC_FILE)
    recorded = _read(spec_file)
    recorded = json.loads(recorded) if recorded is not None else None
    if recorded is not None:
        changed = [k for k in CONTENT_FIELDS if recorded.get(k) != wanted[k]]
        if changed:
            raise ValueError(
                f"{out_dir} holds the offline world built with "
                + ", ".join(f"{k}={recorded.get(k)!r}" for k in changed) + f" ({spec_file}); this config asks "
                "for " + ", ".join(f"{k}={wanted[k]!r}" for k in changed) + ". Its tokenizer, LLaVA files and "
                "any checkpoints beside it belong to that world: use another --workdir, or delete "
                f"{out_dir} to rebuild it.")
    tfds_dir = builder.build(spec, os.path.join(out_dir, "tfds"))
    llava_dir = os.path.join(out_dir, "llava")
    llava_json = {s: os.path.join(llava_dir, f"{s}.json") for s in world.SPLITS}
    # A folder from before the record existed says nothing of its sizes: its export stays as it was.
    exported = (recorded is not None and recorded != wanted) or not all(map(os.path.exists, llava_json.values()))
    if exported:
        llava_json = export.export_llava(spec, llava_dir)
    tokenizer_dir = tokenizer_dir or os.path.join(out_dir, "tokenizer")
    if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
        with atomic.directory(tokenizer_dir) as tmp:  # several files: a killed build leaves none of them
            tokenizer.build_world_tokenizer(spec, tmp, vocab_size=vocab_size)
    processor_dir = os.path.join(out_dir, "image_processor")
    processor_json = os.path.join(processor_dir, "preprocessor_config.json")
    processor = json.dumps(ImageProcessorConfig(size=spec.image_size).to_transformers_dict(), indent=2)
    if _read(processor_json) != processor:  # a rerun over a finished world writes nothing
        os.makedirs(processor_dir, exist_ok=True)
        atomic.write_text(processor_json, processor)
    if exported:  # written last: a folder whose record matches is complete
        atomic.write_text(spec_file, json.dumps(wanted, indent=1, sort_keys=True))
    return WorldFiles(tfds_dir, llava_json, tokenizer_dir, processor_dir)


def _read(path: str):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--num-captions", type=int, default=world.WorldSpec.num_captions)
    parser.add_argument("--num-instructions", type=int, default=world.WorldSpec.num_instructions)
    parser.add_argument("--num-heldout", type=int, default=world.WorldSpec.num_heldout)
    parser.add_argument("--vocab-size", type=int, default=1024)
    args = parser.parse_args(argv)
    spec = world.WorldSpec(
        seed=args.seed,
        image_size=args.image_size,
        num_captions=args.num_captions,
        num_instructions=args.num_instructions,
        num_heldout=args.num_heldout,
    )
    files = prepare_world(args.out, spec, vocab_size=args.vocab_size)
    print(json.dumps(dataclasses.asdict(files), indent=2))


if __name__ == "__main__":
    main()
