"""The teacher's scores of the answers the student trains on (distill/kd_scores.py): our
server's scores of a pool entry with an image line up with the student's own tokenization of
that sample, token by token, and equal the model's log-softmax there; another tokenizer is
refused by entry and token; the files are compact float16; a killed scoring resumes without
asking again; the pipeline lays the scores at the tokens they rate; the loop writes them per
round (topk: the teacher's answers; on_policy: the student's assessed answers, KD only)."""
import asyncio
import json
import os

import numpy as np
import pytest

from comd_jax.data import pipeline
from comd_jax.data.images import ImageProcessorConfig
from comd_jax.data.llava_json import LlavaJsonSource
from comd_jax.data.processing import ExampleProcessor
from comd_jax.data.records import RawExample
from comd_jax.distill import kd_scores, pool as pool_lib, rounds
from comd_jax.distill.kd_scores import ScoredAnswer, Scorer, TokenizerMismatch, align, last_answer
from comd_jax.models.build import build_model
from comd_jax.models.config import DecoderConfig, VisionConfig, VLMConfig
from comd_jax.serve import protocol
from comd_jax.serve.client import PromptScores, score_body, scores_of
from comd_jax.serve.engine import Engine, EngineConfig
from comd_jax.serve.prompts import Limits, Prompter
from tests.data.conftest import make_word_tokenizer, png_bytes

K = 5
IMAGES = ImageProcessorConfig(size=16)


def _tiny(tok):
    return VLMConfig(text=DecoderConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=2,
                                        num_heads=4, num_kv_heads=2, max_position_embeddings=256),
                     vision=VisionConfig(hidden_size=16, intermediate_size=32, num_layers=1, num_heads=2,
                                         image_size=16, patch_size=4),
                     image_token_id=tok.convert_tokens_to_ids("<image>"), projector="linear")


def _processor(tok, cfg, **kw):
    return ExampleProcessor(template="vicuna_v1", tokenizer=tok, image_config=IMAGES,
                            num_image_tokens=cfg.num_image_tokens, max_length=256, **kw)


def _tokens(processor, entry):
    sample = entry.as_llava()
    t = processor.tokenize(RawExample(entry.id, entry.id, sample["conversations"], (entry.image,) if entry.image
                                      else ()))
    return t.input_ids, t.loss_mask


def test_our_servers_scores_line_up_with_the_students_tokens_and_equal_its_log_softmax():
    tok = make_word_tokenizer()
    cfg = _tiny(tok)
    model = build_model(cfg, seed=2)
    engine = Engine(model, tok, EngineConfig(max_batch=2, max_seq_len=256, chunk=2))
    limits = Limits(max_prompt_tokens=256)
    prompter = Prompter(tok, IMAGES, template="vicuna_v1", image_token_id=cfg.image_token_id,
                        num_image_tokens=cfg.num_image_tokens, limits=limits)
    entry = pool_lib.PoolEntry("e1", "<image>\nWhat colour is the circle ?", "It is red .", image="x.png")
    messages = pool_lib.chat_messages(entry, [png_bytes()]) + [{"role": "assistant", "content": entry.target}]
    body = score_body("m", messages, K)
    params, _ = protocol.sampling_params(body, limits)
    options = protocol.prompt_options(body)
    request = prompter.request(body["messages"], params, continue_final=options.continue_final,
                               generation_prompt=options.generation_prompt)
    try:
        (result,) = engine.generate_batch([request])
    finally:
        engine.shutdown()
    reply = json.loads(json.dumps(protocol.completion([result], "m", tok, request.prompt_ids, options)))
    scores = scores_of(reply, "r1")
    ids, mask = _tokens(_processor(tok, cfg), entry)
    assert np.array_equal(ids[:len(request.prompt_ids)], request.prompt_ids)  # the same layout, image included
    scored = align(scores, ids, mask, K, "pool entry e1")
    positions = last_answer(mask)
    assert scored.mask.all() and len(positions) == 5  # "It is red ." and the end token
    assert tok.convert_ids_to_tokens(int(ids[positions[-1]])) == "</s>"
    logits = np.asarray(model.logits(ids[None], request.pixels.transpose(0, 3, 1, 2)))[0].astype(np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    for j, p in enumerate(positions):
        want = np.argsort(-logp[p - 1])[:K]  # position p - 1 predicts token p
        assert scored.ids[j].tolist() == want.tolist()
        np.testing.assert_allclose(scored.logp[j].astype(np.float64), logp[p - 1][want], atol=2e-3)  # float16


def _scores_for(ids, prompt_len, drop=None):
    positions = [None] + [{int(ids[p]): -0.5, 90: -1.0, 91: -2.0} for p in range(1, prompt_len)]
    if drop is not None:
        positions[drop] = {90: -1.0}
    return PromptScores(tuple(positions), {2: -0.1, 93: -3.0})


def test_align_checks_every_token_and_rates_the_end_token_from_the_generated_one():
    ids = np.array([1, 10, 11, 12, 20, 21, 2], np.int32)
    mask = np.array([0, 0, 0, 0, 1, 1, 1], bool)  # the answer 20 21, then the end token 2
    scored = align(_scores_for(ids, 6), ids, mask, 3, "pool entry e")
    assert scored.mask.tolist() == [True, True, True] and scored.ids.dtype == np.int32
    assert scored.ids[0].tolist() == [20, 90, 91] and scored.ids[2].tolist() == [2, 93, 0]  # padded past what came
    assert scored.logp.dtype == np.float16 and float(scored.logp[2, 2]) == kd_scores.PAD_LOGPROB
    with pytest.raises(TokenizerMismatch, match=r"pool entry e: at token 5 the student has id 21.*tokenizers differ"):
        align(_scores_for(ids, 6, drop=5), ids, mask, 3, "pool entry e")
    with pytest.raises(TokenizerMismatch, match="the student's answer starts at token 4"):
        align(_scores_for(ids, 4), ids, mask, 3, "pool entry e")
    two_ends = np.array([1, 10, 20, 21, 2, 2], np.int32)  # an end of two tokens: the second is not rated
    scored = align(_scores_for(two_ends, 4), two_ends, np.array([0, 0, 1, 1, 1, 1], bool), 3, "e")
    assert scored.mask.tolist() == [True, True, True, False]
    earlier = np.array([0, 1, 1, 0, 0, 1, 1], bool)  # multi-turn: only the last answer is scored
    assert last_answer(earlier).tolist() == [5, 6]


def test_files_are_compact_float16_and_read_back(tmp_path):
    rng = np.random.default_rng(0)
    scored = {f"s{i}": ScoredAnswer(rng.integers(0, 1000, (n, 20)).astype(np.int32),
                                    rng.normal(size=(n, 20)).astype(np.float16), rng.random(n) > 0.1, i % 2 == 0)
              for i, n in enumerate((30, 7, 64))}
    path = str(tmp_path / "round0_kd.npz")
    kd_scores.write(path, scored)
    back = kd_scores.read(path)
    assert set(back) == set(scored)
    for key, s in scored.items():
        b = back[key]
        assert np.array_equal(b.ids, s.ids) and np.array_equal(b.logp, s.logp) and np.array_equal(b.mask, s.mask)
        assert b.logp.dtype == np.float16 and b.ce == s.ce
    assert os.path.getsize(path) < 101 * 20 * 6 + 4096  # 6 bytes per score, a little header
    (tmp_path / "bad.npz").write_bytes(b"no")
    with pytest.raises(ValueError, match="bad.npz: not a teacher-scores file"):
        kd_scores.read(str(tmp_path / "bad.npz"))


class ScoringTeacher:
    """Scores any answer: every token it is shown is rated, plus two others."""

    def __init__(self, tokens, fail_after=None):
        self.tokens, self.asked, self.fail_after = tokens, 0, fail_after

    async def score_many(self, requests, skipped_ok=False):
        if self.fail_after is not None and self.asked + len(requests) > self.fail_after:
            raise RuntimeError("teacher endpoint died")
        out = []
        for messages, k in requests:
            self.asked += 1
            answer = messages[-1]["content"]
            ids = self.tokens[answer]
            out.append(_scores_for(ids, len(ids) - 1))
        return out


def _entries(n, target="a b"):
    return [pool_lib.PoolEntry(f"e{i:03d}", f"q{i}", f"{target} {i}", provenance={"answered_by": "teacher"})
            for i in range(n)]


def _fake_tokens(entry):
    ids = np.array([1, 10, 11] + [20 + int(entry.id[1:]) % 50, 30] + [2], np.int32)
    return ids, np.array([0, 0, 0, 1, 1, 1], bool)


def test_a_killed_scoring_resumes_without_asking_again(tmp_path):
    entries = _entries(150)
    tokens = {e.target: _fake_tokens(e)[0] for e in entries}
    directory = str(tmp_path / "teacher_scores")
    dying = ScoringTeacher(tokens, fail_after=2 * kd_scores.CHUNK)
    with pytest.raises(RuntimeError, match="died"):
        Scorer(dying, directory, 3, _fake_tokens, lambda e: []).scores_for(entries)
    assert dying.asked == 2 * kd_scores.CHUNK  # two chunks landed on disk before the kill
    teacher = ScoringTeacher(tokens)
    first = Scorer(teacher, directory, 3, _fake_tokens, lambda e: []).scores_for(entries)
    assert teacher.asked == 150 - 2 * kd_scores.CHUNK and len(first) == 150
    again = ScoringTeacher(tokens)
    second = Scorer(again, directory, 3, _fake_tokens, lambda e: []).scores_for(entries)
    assert again.asked == 0
    assert all(np.array_equal(first[i].logp, second[i].logp) for i in first)
    changed = entries[:3] + [pool_lib.PoolEntry("e003", "q3", "won by the student", provenance={})]
    tokens["won by the student"] = _fake_tokens(changed[-1])[0]
    third = ScoringTeacher(tokens)
    Scorer(third, directory, 3, _fake_tokens, lambda e: []).scores_for(changed)
    assert third.asked == 1  # a rewritten target is a new answer to score


def test_the_pipeline_lays_scores_at_the_tokens_they_rate(tmp_path):
    tok = make_word_tokenizer()
    cfg = _tiny(tok)
    entries = [pool_lib.PoolEntry("a", "What colour is the circle ?", "It is red ."),
               pool_lib.PoolEntry("b", "Is it big ?", "No ."),
               pool_lib.PoolEntry("c", "Is it big ?", "Yes .")]
    train_json = str(tmp_path / "train.json")
    pool_lib.write_llava(train_json, entries)
    processor = _processor(tok, cfg)
    lay = {}
    for e, ce in zip(entries[:2], (True, False)):  # c: not scored
        ids, mask = _tokens(processor, e)
        n = len(last_answer(mask))
        lay[e.id] = ScoredAnswer(np.tile(np.arange(K, dtype=np.int32), (n, 1)) + 7,
                                 np.full((n, K), -1.5, np.float16), np.arange(n) < n - 1, ce)
    config = pipeline.PipelineConfig(batch_size=3, length_buckets=(64,), shuffle=False, num_epochs=1,
                                     drop_remainder=False, kd_k=K, prefetch_batches=0)
    with pipeline.make_pipeline(LlavaJsonSource(train_json), template="vicuna_v1", tokenizer=tok, image_config=IMAGES,
                                num_image_tokens=cfg.num_image_tokens, config=config, teacher_scores=lay) as pipe:
        batch = next(pipe)
    assert batch["kd_ids"].shape == (3, 64, K) and batch["kd_logp"].dtype == np.float16
    for row, e in enumerate(entries):
        ids, mask = _tokens(processor, e)
        positions = last_answer(mask)
        if e.id == "c":
            assert batch["kd_mask"][row].sum() == 0 and batch["loss_mask"][row].sum() == mask.sum()
            continue
        assert np.flatnonzero(batch["kd_mask"][row]).tolist() == positions[:-1].tolist()  # the unrated end: off
        assert (batch["kd_ids"][row, positions[0]] == np.arange(K) + 7).all()
        assert batch["loss_mask"][row].sum() == (mask.sum() if lay[e.id].ce else 0)  # on-policy: KD only
    stale = {"a": ScoredAnswer(np.zeros((2, K), np.int32), np.zeros((2, K), np.float16), np.ones(2, bool))}
    skipped = _processor(tok, cfg, teacher_scores=stale)(RawExample("a", "x", entries[0].as_llava()["conversations"]))
    assert "scores of another answer" in skipped.describe()


class Recorder:
    """A scorer that records what it was asked to score."""

    def __init__(self):
        self.calls = []

    def scores_for(self, entries, ce=True):
        self.calls.append(([e.id for e in entries], ce))
        return {e.id: ScoredAnswer(np.zeros((2, 3), np.int32), np.zeros((2, 3), np.float16), np.ones(2, bool), ce)
                for e in entries}


@pytest.mark.parametrize("mode", ["topk", "on_policy"])
def test_the_loop_writes_each_rounds_scores_beside_its_training_file(tmp_path, mode):
    from tests.distill.test_rounds import make_loop, student_answers, Teacher

    tuned, recorder = [], Recorder()
    loop = make_loop(tmp_path, Teacher(), student_answers(), tuned, kd=mode)
    loop.parts.scorer = recorder
    loop.run()
    round0 = kd_scores.read(str(tmp_path / "distill" / "round0_train_kd.npz"))
    round1 = kd_scores.read(str(tmp_path / "distill" / "round1_train_kd.npz"))
    train1 = json.load(open(tmp_path / "distill" / "round1_train.json"))
    if mode == "topk":  # the teacher's answers in the pool, with cross-entropy
        assert recorder.calls[0][1] is True and len(round0) == 12 and all(s.ce for s in round1.values())
        won = {e.id for e in pool_lib.load(str(tmp_path / "distill" / "train_pool.jsonl"))
               if e.provenance.get("won_round") == 0}
        assert won and round1 and set(round1) == {s["id"] for s in train1} - won  # a student win: no teacher KD
        assert len(train1) == tuned[1][1]
        assert all("~student" not in s["id"] for s in train1)
    else:  # round 0: nothing assessed yet; round 1: the student's round-0 answers, KD only
        assert round0 == {} and len(recorder.calls) == 1 and recorder.calls[0][1] is False
        own = [s for s in train1 if "~student0" in s["id"]]
        assert own and set(round1) == {s["id"] for s in own} and not any(s.ce for s in round1.values())
        assessed = {json.loads(line)["id"]: json.loads(line)["student"]
                    for line in open(tmp_path / "distill" / "round0_assess.jsonl")}
        for s in own:
            assert s["conversations"][-1]["value"] == assessed[s["id"].split("~")[0]].strip()


class Refusing:
    """A teacher endpoint whose every scoring reply was unusable (each entry left out, logged)."""

    def scores_for(self, entries, ce=True):
        return {}


def test_a_round_without_cross_entropy_and_without_scores_stops_instead_of_training_on_nothing(tmp_path):
    from tests.distill.test_rounds import make_loop, student_answers, Teacher

    tuned = []
    loop = make_loop(tmp_path, Teacher(), student_answers(), tuned, kd="topk", kd_ce_weight=0.0)
    loop.parts.scorer = Refusing()
    with pytest.raises(RuntimeError, match=r"round0_train\.json: distill\.kd_ce_weight=0 .* scored none of round 0"):
        loop.run()
    assert tuned == []  # stopped before the tuning, nothing trained
    tuned = []
    loop = make_loop(tmp_path / "with_ce", Teacher(), student_answers(), tuned, kd="topk")
    loop.parts.scorer = Refusing()
    loop.run()  # with the cross-entropy the rows still train, without KD
    assert len(tuned) == 2


def test_a_scorer_reads_each_chunk_once_across_rounds(tmp_path, monkeypatch):
    """A round reads only the chunks new since the last; its answers are the same as a fresh read."""
    entries = _entries(100)
    tokens = {e.target: _fake_tokens(e)[0] for e in entries}
    directory = str(tmp_path / "teacher_scores")
    reads = []
    real_read = kd_scores.read
    monkeypatch.setattr(kd_scores, "read", lambda path: reads.append(os.path.basename(path)) or real_read(path))
    scorer = Scorer(ScoringTeacher(tokens), directory, 3, _fake_tokens, lambda e: [])
    scorer.scores_for(entries[:70])  # round 0: two chunks written, none read back
    assert reads == []
    Scorer(ScoringTeacher(tokens), directory, 3, _fake_tokens, lambda e: []).scores_for(entries[:1])
    assert sorted(reads) == ["chunk000000.npz", "chunk000001.npz"]  # another process reads what is there
    reads.clear()
    later = scorer.scores_for(entries)  # round 1: 30 new answers, one new chunk
    assert reads == [] and scorer.asked == 100 and len(later) == 100
    fresh = Scorer(ScoringTeacher(tokens), directory, 3, _fake_tokens, lambda e: []).scores_for(entries)
    assert all(np.array_equal(later[i].logp, fresh[i].logp) and np.array_equal(later[i].ids, fresh[i].ids)
               for i in fresh)
