"""Everything the offline world needs on disk, in one call.

  python -m comd_jax.data.synthetic.prepare --out=/tmp/world [--seed=0] [--image-size=32]

writes out/tfds (the TFDS dataset), out/llava (LLaVA JSON + PNG), out/tokenizer
(transformers tokenizer with chat template) and out/image_processor
(preprocessor_config.json). Reruns reuse what exists and write nothing
when it is all there.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os

from comd_jax.data.images import ImageProcessorConfig
from comd_jax.data.synthetic import export, tokenizer, world


@dataclasses.dataclass(frozen=True)
class WorldFiles:
    tfds_dir: str  # the prepared builder folder (TfdsSource.from_directory)
    llava_json: dict[str, str]  # split -> JSON file; images beside it
    tokenizer_dir: str
    image_processor_dir: str


def prepare_world(
    out_dir: str, spec: world.WorldSpec = world.WorldSpec(), *, vocab_size: int = 1024
) -> WorldFiles:
    from comd_jax.data.synthetic import builder  # TFDS import only when building it

    tfds_dir = builder.build(spec, os.path.join(out_dir, "tfds"))
    llava_dir = os.path.join(out_dir, "llava")
    llava_json = {s: os.path.join(llava_dir, f"{s}.json") for s in world.SPLITS}
    if not all(os.path.exists(p) for p in llava_json.values()):
        llava_json = export.export_llava(spec, llava_dir)
    tokenizer_dir = os.path.join(out_dir, "tokenizer")
    if not os.path.exists(os.path.join(tokenizer_dir, "tokenizer.json")):
        tokenizer.build_world_tokenizer(spec, tokenizer_dir, vocab_size=vocab_size)
    processor_dir = os.path.join(out_dir, "image_processor")
    processor_json = os.path.join(processor_dir, "preprocessor_config.json")
    processor = json.dumps(ImageProcessorConfig(size=spec.image_size).to_transformers_dict(), indent=2)
    if _read(processor_json) != processor:  # a rerun over a finished world writes nothing
        os.makedirs(processor_dir, exist_ok=True)
        with open(processor_json, "w") as f:
            f.write(processor)
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
