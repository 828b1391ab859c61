"""Every bad-input class: lenient mode skips and counts it, strict mode stops on it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import (
    BAD_SAMPLES,
    SYSTEM_WORDS,
    make_word_tokenizer,
    sample,
    write_image_folder,
    write_jsonl,
)

from comd_jax.data import errors, images, pipeline
from comd_jax.data.llava_json import LlavaJsonSource
from comd_jax.data.processing import ExampleProcessor
from comd_jax.data.templates import TEMPLATES
from tests._paths import REPO

IMAGE_CONFIG = images.ImageProcessorConfig(size=8)


def make(source, *, strict, template="vicuna_v1", batch_size=4):
    processor = ExampleProcessor(
        template=template,
        tokenizer=make_word_tokenizer(),
        image_config=IMAGE_CONFIG,
        num_image_tokens=2,
        max_length=64,
    )
    config = pipeline.PipelineConfig(
        batch_size=batch_size,
        length_buckets=(32, 64),
        num_epochs=1,
        shuffle=False,
        strict=strict,
        drop_remainder=False,
    )
    return pipeline.InputPipeline(source, processor, config, process_index=0, process_count=1)


@pytest.fixture
def dataset(tmp_path):
    folder = str(tmp_path / "images")
    write_image_folder(folder)
    good = [json.dumps(sample(f"good{i}", answer=f"w{i}")) for i in range(3)]
    lines = good[:1] + [line for line, _ in BAD_SAMPLES.values()] + good[1:]
    return write_jsonl(str(tmp_path / "data.jsonl"), lines), folder


def count_rows(batches):
    return sum(int(b["attention_mask"].any(axis=1).sum()) for b in batches)


def test_lenient_skips_counts_and_keeps_good_samples(dataset):
    path, folder = dataset
    with make(LlavaJsonSource(path, folder), strict=False) as p:
        batches = list(p)
        counts = p.skip_log.counts
        summary = p.skip_log.summary()
    assert count_rows(batches) == 3  # all good samples, nothing else
    expected = {}
    for _, reason in BAD_SAMPLES.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert counts == expected
    for sample_id, (_, reason) in BAD_SAMPLES.items():
        sample_id = "line5" if sample_id == "badjson" else sample_id  # unparsable: line number
        assert sample_id in summary, (sample_id, summary)


@pytest.mark.parametrize("bad_id", sorted(BAD_SAMPLES))
def test_strict_stops_with_file_line_and_reason(tmp_path, bad_id):
    folder = str(tmp_path / "images")
    write_image_folder(folder)
    line, reason = BAD_SAMPLES[bad_id]
    path = write_jsonl(str(tmp_path / "data.jsonl"), [json.dumps(sample("ok")), line])
    with make(LlavaJsonSource(path, folder), strict=True, batch_size=1) as p:
        with pytest.raises(errors.DataError) as info:
            list(p)
    message = str(info.value)
    assert "data.jsonl:2" in message and reason in message


def test_tokenization_mismatch_both_modes(tmp_path):
    folder = str(tmp_path / "images")
    write_image_folder(folder)
    path = write_jsonl(str(tmp_path / "d.jsonl"), [json.dumps(sample("s0", answer="Yes"))])
    # With split punctuation off, "ASSISTANT:Yes" is one token across the boundary.
    glued = dataclasses.replace(TEMPLATES["vicuna_v1"], assistant_prefix="ASSISTANT:")
    processor = ExampleProcessor(
        template=glued,
        tokenizer=make_word_tokenizer(split_punctuation=False),
        image_config=IMAGE_CONFIG,
        num_image_tokens=2,
        max_length=64,
    )
    for strict in (False, True):
        config = pipeline.PipelineConfig(
            batch_size=1, length_buckets=(64,), num_epochs=1, shuffle=False, strict=strict
        )
        p = pipeline.InputPipeline(
            LlavaJsonSource(path, folder), processor, config, process_index=0, process_count=1
        )
        if strict:
            with pytest.raises(errors.DataError, match="tokenization_mismatch"):
                list(p)
        else:
            assert list(p) == []
            assert p.skip_log.counts == {"tokenization_mismatch": 1}
        p.close()


def test_broken_json_list_is_fatal(tmp_path):
    path = tmp_path / "d.json"
    path.write_text('[{"id": 1}')
    with pytest.raises(errors.DataError, match="not valid JSON"):
        LlavaJsonSource(str(path))


def test_json_list_with_image_list_and_text_only(tmp_path):
    folder = str(tmp_path / "images")
    write_image_folder(folder)
    items = [
        sample("two", image=None, question="<image>\n<image>\nWhat colour is it ?"),
        sample("text", image=None, question="What colour is it ?"),
    ]
    items[0]["image"] = ["good.png", "good.png"]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(items))
    source = LlavaJsonSource(str(path), folder)
    processor = ExampleProcessor(
        template="vicuna_v1",
        tokenizer=make_word_tokenizer(),
        image_config=IMAGE_CONFIG,
        num_image_tokens=2,
        max_length=64,
        max_images=2,
    )
    two, text = processor(source[0]), processor(source[1])
    assert two.pixel_values.shape == (2, 8, 8, 3) and text.pixel_values.shape == (0, 8, 8, 3)
    # Only one image slot: the two-image sample is refused, not truncated.
    processor_one = ExampleProcessor(
        template="vicuna_v1",
        tokenizer=make_word_tokenizer(),
        image_config=IMAGE_CONFIG,
        num_image_tokens=2,
        max_length=64,
    )
    assert processor_one(source[0]).reason == errors.TOO_MANY_IMAGES


def run_check(*args):
    return subprocess.run(
        [sys.executable, "-m", "comd_jax.data.check", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )


def test_checker_cli(tmp_path, word_tokenizer_dir):
    folder = str(tmp_path / "images")
    write_image_folder(folder)
    lines = [
        json.dumps(sample("good", answer="It is red .")),
        *[BAD_SAMPLES[k][0] for k in ("missing", "robot", "badjson")],
    ]
    data = write_jsonl(str(tmp_path / "d.jsonl"), lines)
    report = tmp_path / "report.jsonl"
    common = [
        "--template=vicuna_v1",
        f"--tokenizer={word_tokenizer_dir}",
        f"--data={data}",
        f"--image-folder={folder}",
        "--num-image-tokens=4",
        "--max-length=128",
    ]
    lenient = run_check(*common, f"--report={report}")
    assert lenient.returncode == 0, lenient.stderr
    assert "ok: 1" in lenient.stdout
    assert "missing_image: 1 (e.g. missing)" in lenient.stdout
    assert "unknown_role: 1 (e.g. robot)" in lenient.stdout
    assert "malformed_json: 1 (e.g. line4)" in lenient.stdout
    assert "p50" in lenient.stdout
    rows = [json.loads(l) for l in report.read_text().splitlines()]
    assert [r["status"] for r in rows] == ["ok", "missing_image", "unknown_role", "malformed_json"]
    assert set(rows[0]) >= {"id", "status", "num_tokens", "trained_text"}
    assert rows[0]["trained_text"].split() == ["It", "is", "red", ".", "</s>"]
    # <s>, system, "USER :", 4 image tokens, "What colour is it ?", "ASSISTANT :", answer + </s>
    assert rows[0]["num_tokens"] == 1 + len(SYSTEM_WORDS) + 2 + 4 + 5 + 2 + 5
    strict = run_check(*common, "--strict")
    assert strict.returncode == 1
    assert "d.jsonl:2" in strict.stderr and "missing_image" in strict.stderr
    # Clean data passes strict mode (in-process: the subprocess path is proven above).
    from comd_jax.data import check

    clean = write_jsonl(str(tmp_path / "clean.jsonl"), lines[:1])
    args = [a for a in common if not a.startswith("--data")]
    assert check.main([*args, f"--data={clean}", "--strict"]) == 0
