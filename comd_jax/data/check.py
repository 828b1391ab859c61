"""Lint a dataset before anyone spends a pod-hour on it.

  python -m comd_jax.data.check --template=vicuna_v1 --tokenizer=DIR --data=FILE \
      [--image-folder=DIR] [--strict] [--report=OUT.jsonl] [--num-image-tokens=576] \
      [--max-length=2048] [--image-processor=DIR_OR_JSON] [--max-images=1]

Runs every sample through the same ExampleProcessor the training pipeline
uses, prints a summary (ok count, skips by reason with example ids, length
percentiles) and optionally writes one JSON line per sample with its id,
status, token count and the decoded text of exactly the tokens carrying
loss. In strict mode the exit status is 1 when any sample would be skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from comd_jax.data import errors, images
from comd_jax.data.llava_json import LlavaJsonSource
from comd_jax.data.processing import Example, ExampleProcessor
from comd_jax.data.records import Source
from comd_jax.data.templates import TEMPLATES


@dataclasses.dataclass(frozen=True)
class SampleReport:
    id: str
    status: str  # "ok" or a skip reason
    num_tokens: int | None
    trained_text: str | None
    origin: str
    detail: str = ""


def check_source(source: Source, processor: ExampleProcessor) -> list[SampleReport]:
    reports = []
    for index in range(len(source)):
        raw = source[index]
        result = processor(raw)
        if isinstance(result, Example):
            trained = result.input_ids[result.loss_mask]
            text = processor.tokenizer.decode(trained.tolist(), skip_special_tokens=False)
            reports.append(SampleReport(raw.id, "ok", result.num_tokens, text, raw.origin))
        else:
            reports.append(
                SampleReport(raw.id, result.reason, None, None, raw.origin, result.detail)
            )
    return reports


def summarize(reports: list[SampleReport]) -> str:
    log = errors.SkipLog()
    for r in reports:
        if r.status != "ok":
            log.record(errors.Skipped(r.id, r.origin, r.status, r.detail))
    lengths = np.array([r.num_tokens for r in reports if r.status == "ok"])
    lines = [f"samples: {len(reports)}", f"ok: {lengths.size}", log.summary()]
    if lengths.size:
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        lines.append(
            f"tokens per ok sample: min {lengths.min()} p50 {p50:.0f} p90 {p90:.0f} "
            f"p99 {p99:.0f} max {lengths.max()}"
        )
    return "\n".join(lines)


def _parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m comd_jax.data.check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--template", required=True, choices=sorted(TEMPLATES))
    parser.add_argument("--tokenizer", required=True, help="transformers tokenizer folder")
    parser.add_argument("--data", required=True, help="LLaVA .json or .jsonl file")
    parser.add_argument("--image-folder", default=None)
    parser.add_argument("--strict", action="store_true")
    parser.add_argument("--report", default=None, help="write one JSON line per sample here")
    parser.add_argument("--num-image-tokens", type=int, default=576)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--max-images", type=int, default=1)
    parser.add_argument(
        "--image-processor",
        default=None,
        help="preprocessor_config.json or its folder (default: CLIP at 336 px)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    from transformers import AutoTokenizer  # Heavy import after argument errors.

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    image_config = (
        images.ImageProcessorConfig.from_pretrained(args.image_processor)
        if args.image_processor
        else images.ImageProcessorConfig(size=336)
    )
    processor = ExampleProcessor(
        template=args.template,
        tokenizer=tokenizer,
        image_config=image_config,
        num_image_tokens=args.num_image_tokens,
        max_length=args.max_length,
        max_images=args.max_images,
    )
    try:
        source = LlavaJsonSource(args.data, args.image_folder)
    except errors.DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    reports = check_source(source, processor)
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            for r in reports:
                f.write(
                    json.dumps(
                        {
                            "id": r.id,
                            "status": r.status,
                            "num_tokens": r.num_tokens,
                            "trained_text": r.trained_text,
                            "origin": r.origin,
                            "detail": r.detail,
                        },
                        ensure_ascii=False,
                    )
                    + "\n"
                )
    print(f"checked {args.data} with template {args.template}")
    print(summarize(reports))
    bad = [r for r in reports if r.status != "ok"]
    if args.strict and bad:
        first = bad[0]
        print(
            f"strict: {len(bad)} sample(s) would be skipped; first: {first.origin} "
            f"(id={first.id}): {first.status}: {first.detail}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
