"""The world as LLaVA-format files: `{split}.json` + `images/{id}.png`.

Training on the export goes through the same LLaVA JSON loader users'
datasets do. Files are byte-identical for the same spec.
"""

from __future__ import annotations

import json
import os

from comd_jax import atomic
from comd_jax.data.synthetic import world


def export_llava(
    spec: world.WorldSpec, out_dir: str, splits: tuple[str, ...] = world.SPLITS
) -> dict[str, str]:
    """Writes the splits; returns {split: path of its JSON file}."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    paths = {}
    for split in splits:
        records = []
        for example in world.iterate_split(spec, split):
            image_path = f"images/{example.id}.png"
            with open(os.path.join(out_dir, image_path), "wb") as f:
                f.write(example.png)
            records.append(
                {
                    "id": example.id,
                    "image": image_path,
                    "conversations": list(example.conversations),
                    "skill": example.skill,
                    "answer": example.answer,
                }
            )
        paths[split] = os.path.join(out_dir, f"{split}.json")
        # Whole or absent: the world's preparation takes an existing JSON as a finished split.
        atomic.write_text(paths[split], json.dumps(records, ensure_ascii=False, indent=1) + "\n")
    return paths
