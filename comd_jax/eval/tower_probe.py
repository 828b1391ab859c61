"""Can a from-scratch vision tower of a given size see the offline world at all?

  python -m comd_jax.eval.tower_probe --config=configs/comd.py:ablation [--section=teacher] \
      [--steps=1500] [--batch=64] [--patch_size=4] [--image_size=64]

Trains the config's vision tower alone, with direct labels, on scenes of one
object: a linear head on LLaVA's features (feature layer, CLS dropped,
averaged over the patches) predicts the object's shape (4 classes) and colour
(6 classes). It prints held-out accuracy as it goes. Colour can be read off
any one pixel of the object; shape needs the pixels' arrangement, and the
world's questions hinge on it ("What colour is the diamond?" names the object
by its shape). A tower that cannot learn shapes here, with a label on every
scene, will not learn them from a few answer tokens of instruction tuning:
check this before spending a teacher run on a new image size or patch size.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from comd_jax import config as config_lib
from comd_jax.data import images
from comd_jax.data.synthetic import scene
from comd_jax.models.vision import VisionTower

SHAPES, COLOURS = scene.SHAPES, tuple(scene.PALETTE)


@dataclasses.dataclass(frozen=True)
class Scenes:
    pixels: np.ndarray  # float32 [N, S, S, 3], normalized as the pipeline does
    shape: np.ndarray  # int [N]
    colour: np.ndarray  # int [N]


def one_object_scenes(rng: np.random.Generator, n: int, image_size: int) -> Scenes:
    processor = images.ImageProcessorConfig(size=image_size)
    pixels, shapes, colours = [], [], []
    for _ in range(n):
        s = scene.sample_scene(rng, image_size, 1)
        pixels.append(images.preprocess(images.load_image(scene.render(s)), processor))
        shapes.append(SHAPES.index(s.objects[0].shape))
        colours.append(COLOURS.index(s.objects[0].colour))
    return Scenes(np.stack(pixels), np.array(shapes), np.array(colours))


class TowerProbe(nnx.Module):
    """The tower, LLaVA's feature selection, mean over patches, one linear head per label."""

    def __init__(self, vlm_cfg, *, rngs: nnx.Rngs):
        self.depth = vlm_cfg.feature_depth
        self.tower = VisionTower(vlm_cfg.vision, rngs=rngs)
        width = vlm_cfg.vision.hidden_size
        self.shape_head = nnx.Linear(width, len(SHAPES), rngs=rngs)
        self.colour_head = nnx.Linear(width, len(COLOURS), rngs=rngs)

    def __call__(self, pixels):
        features = self.tower.hidden_state(pixels, self.depth)[:, 1:].mean(axis=1)
        return self.shape_head(features), self.colour_head(features)


def _loss(model, pixels, shape, colour):
    shape_logits, colour_logits = model(pixels)
    ce = optax.softmax_cross_entropy_with_integer_labels
    return ce(shape_logits, shape).mean() + ce(colour_logits, colour).mean()


@nnx.jit
def _train_step(model, optimizer, pixels, shape, colour):
    loss, grads = nnx.value_and_grad(_loss)(model, pixels, shape, colour)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def _predict(model, pixels):
    shape_logits, colour_logits = model(pixels)
    return shape_logits.argmax(-1), colour_logits.argmax(-1)


def probe(vlm_cfg, *, steps: int, batch: int = 64, learning_rate: float = 1e-3, num_train: int = 8000,
          num_test: int = 1000, evals: int = 4, seed: int = 0, log=print) -> list[dict]:
    """Trains the probe; returns held-out accuracies at `evals` evenly spaced steps."""
    rng = np.random.default_rng(seed)
    size = vlm_cfg.vision.image_size
    train, test = one_object_scenes(rng, num_train, size), one_object_scenes(rng, num_test, size)
    model = TowerProbe(vlm_cfg, rngs=nnx.Rngs(seed))
    optimizer = nnx.Optimizer(model, optax.adamw(learning_rate), wrt=nnx.Param)
    every = max(steps // evals, 1)
    history, start = [], time.time()
    for step in range(1, steps + 1):
        idx = rng.integers(0, num_train, batch)
        loss = _train_step(model, optimizer, jnp.asarray(train.pixels[idx]), jnp.asarray(train.shape[idx]),
                           jnp.asarray(train.colour[idx]))
        if step % every == 0 or step == steps:
            shape_pred, colour_pred = (np.asarray(p) for p in _predict(model, jnp.asarray(test.pixels)))
            row = dict(step=step, loss=float(loss), shape_accuracy=float((shape_pred == test.shape).mean()),
                       colour_accuracy=float((colour_pred == test.colour).mean()),
                       seconds=round(time.time() - start, 1))
            history.append(row)
            log(f"step {step}: loss {row['loss']:.3f}  shape {row['shape_accuracy']:.1%} "
                f"(chance {1 / len(SHAPES):.0%})  colour {row['colour_accuracy']:.1%} "
                f"(chance {1 / len(COLOURS):.0%})  [{row['seconds']:.0f} s]")
    return history


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m comd_jax.eval.tower_probe", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=config_lib.DEFAULT_CONFIG_FILE, help="path[:preset]")
    parser.add_argument("--section", default="model", choices=("model", "teacher"))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--patch_size", type=int, default=0, help="override the config's (0: keep)")
    parser.add_argument("--image_size", type=int, default=0, help="override the config's (0: keep)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    config = config_lib.load_config_file(args.config)
    section = config[args.section]
    if args.patch_size:
        section.vision.patch_size = args.patch_size
    if args.image_size:
        section.vision.image_size = args.image_size
    vlm_cfg = config_lib.model_config(section)
    v = vlm_cfg.vision
    print(f"{args.config} {args.section}: tower {v.hidden_size} wide, {v.num_layers} layers, {v.image_size} px "
          f"images in {v.patch_size} px patches ({v.num_patches} tokens), features of layer {vlm_cfg.feature_depth}")
    probe(vlm_cfg, steps=args.steps, batch=args.batch, learning_rate=args.learning_rate, seed=args.seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
