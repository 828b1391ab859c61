"""The teacher's top-k scores of the answers the student trains on (`distill.kd`).

For each pool entry, the teacher endpoint scores the exact answer in the student's training
sample (`ChatClient.score`: vLLM's `prompt_logprobs` with `continue_final_message`, images
included), and `align` lays its scores onto the sample's trained tokens as the student's own
pipeline tokenizes them: the last answer's trained tokens, the end token included, rated at
the positions that predict them. The student's token must be among the teacher's entries at
each position (vLLM and our server always include the prompt's own token), so a teacher whose
tokenizer or prompt layout differs is refused by entry and position, never trained on.

Scores are kept on disk in compact chunks (float16, k <= 20), keyed by what they depend on
(the conversation, its image, the answer and k): a resumed run asks nothing it already has, a
rewritten target (a student win) is scored again. Each training round gets its own file,
`round{r}_kd.npz`, mapping that round's sample ids to their scores (`read`/`write`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

from comd_jax import atomic

PAD_LOGPROB = -30.0  # a missing alternative (fewer than k sent): negligible mass, no inf in the loss
CHUNK = 64  # scoring requests per stored chunk: a kill loses at most one chunk's answers


class TokenizerMismatch(ValueError):
    """The teacher tokenized the student's sample differently; cross-tokenizer distillation is not built."""


@dataclasses.dataclass(frozen=True)
class ScoredAnswer:
    """The teacher's k most likely tokens at each of a sample's last n trained positions."""
    ids: np.ndarray  # int32 [n, k]
    logp: np.ndarray  # float16 [n, k], most likely first
    mask: np.ndarray  # bool [n]: rated (an end token past the teacher's prompt, e.g. a second one, is not)
    ce: bool = True  # False: an on-policy sample (the student's own answer): KD only, no cross-entropy

    def __post_init__(self):
        n = len(self.mask)
        if self.ids.shape[0] != n or self.logp.shape != self.ids.shape:
            raise ValueError(f"scores of mismatched shapes: ids {self.ids.shape}, logp {self.logp.shape}, mask {n}")


def last_answer(loss_mask: np.ndarray) -> np.ndarray:
    """The positions of the last answer's trained tokens: the final run of True in the mask."""
    trained = np.flatnonzero(np.asarray(loss_mask, bool))
    if trained.size == 0:
        return trained
    breaks = np.flatnonzero(np.diff(trained) != 1)
    return trained[breaks[-1] + 1:] if breaks.size else trained


def _top(entry: Mapping, k: int):
    ranked = sorted(entry.items(), key=lambda kv: -kv[1])[:k]
    ids = np.zeros(k, np.int32)
    logp = np.full(k, PAD_LOGPROB, np.float32)
    for j, (token, value) in enumerate(ranked):
        ids[j], logp[j] = token, max(value, PAD_LOGPROB)
    return ids, logp


def align(scores, input_ids: np.ndarray, loss_mask: np.ndarray, k: int, where: str, ce: bool = True) -> ScoredAnswer:
    """A teacher's `PromptScores` of a sample → its `ScoredAnswer`, checked token by token.

    Position p of the student's sample holds token p; the teacher rated it at prompt position p
    (its prompt is the sample up to the answer's last character), and rated the token after its
    prompt (the end token) through the generated token's top-k."""
    positions = last_answer(loss_mask)
    if positions.size == 0:
        raise ValueError(f"{where}: the sample has no trained token to score")
    prompt = len(scores.positions)
    if positions[0] >= prompt:
        raise TokenizerMismatch(f"{where}: the teacher's prompt has {prompt} tokens, but the student's answer starts at "
                                f"token {positions[0]}: teacher and student lay the prompt out differently "
                                "(tokenizer, chat template or image tokens)")
    ids = np.zeros((positions.size, k), np.int32)
    logp = np.full((positions.size, k), PAD_LOGPROB, np.float32)
    mask = np.zeros(positions.size, bool)
    for j, p in enumerate(positions):
        if p < prompt:
            entry = scores.positions[p]
            if entry is None or int(input_ids[p]) not in entry:
                raise TokenizerMismatch(
                    f"{where}: at token {p} the student has id {int(input_ids[p])}, which the teacher's scores there "
                    f"do not hold ({sorted(entry or {})[:8]}...): teacher and student tokenizers differ; distill.kd "
                    "needs the same tokenizer (cross-tokenizer distillation is not built)")
            entry = dict(entry)
        elif p == prompt:
            entry = scores.final
        else:
            continue
        ids[j], logp[j] = _top(entry, k)
        mask[j] = True
    return ScoredAnswer(ids, logp.astype(np.float16), mask, ce)


# -- files ------------------------------------------------------------------------------------
def write(path: str, scored: Mapping[str, ScoredAnswer]) -> None:
    """{key: ScoredAnswer} as one .npz (float16 log-probabilities), written atomically."""
    keys = sorted(scored)
    k = next((scored[key].ids.shape[1] for key in keys), 0)
    arrays = {
        "keys": np.array(keys, dtype=str),
        "lengths": np.array([len(scored[key].mask) for key in keys], np.int32),
        "ce": np.array([scored[key].ce for key in keys], bool),
        "ids": np.concatenate([scored[key].ids for key in keys]) if keys else np.zeros((0, k), np.int32),
        "logp": np.concatenate([scored[key].logp for key in keys]) if keys else np.zeros((0, k), np.float16),
        "mask": np.concatenate([scored[key].mask for key in keys]) if keys else np.zeros((0,), bool),
    }
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic.write_bytes(path, buf.getvalue())


def read(path: str) -> dict:
    """What `write` wrote; a file that is not one is an error naming it."""
    try:
        with np.load(path, allow_pickle=False) as f:
            keys, lengths, ce = f["keys"], f["lengths"], f["ce"]
            ids, logp, mask = f["ids"], f["logp"], f["mask"]
    except (OSError, KeyError, ValueError) as e:
        raise ValueError(f"{path}: not a teacher-scores file ({e})") from None
    out, start = {}, 0
    for key, n, c in zip(keys.tolist(), lengths.tolist(), ce.tolist()):
        out[key] = ScoredAnswer(ids[start:start + n], logp[start:start + n], mask[start:start + n], bool(c))
        start += n
    return out


def content_key(entry, k: int) -> str:
    """What a score depends on: the conversation, its image, the answer and k."""
    what = json.dumps([[list(t) for t in entry.turns()], entry.image, entry.target, k])
    return hashlib.sha256(what.encode()).hexdigest()[:32]


class Scorer:
    """Scores pool entries through a teacher `ChatClient`, keeping every score on disk.

    `tokenize(entry) -> (input_ids, loss_mask)`: the student's own tokenization of the entry's
    training sample (the pipeline's processor), which the teacher's scores are checked against."""

    def __init__(self, client, directory: str, k: int, tokenize: Callable, images_of: Callable):
        self.client, self.dir, self.k = client, directory, k
        self.tokenize, self.images_of = tokenize, images_of
        self.asked = 0  # scoring requests sent by this object (what a resumed run must not repeat)
        # Chunks already read, by file name: chunks are written once and never rewritten, so each
        # round reads only the ones that are new since the last (a long run's pool has thousands).
        self._read, self._scores = set(), {}

    def _stored(self) -> dict:
        if os.path.isdir(self.dir):
            for name in sorted(os.listdir(self.dir)):
                if name.endswith(".npz") and name not in self._read:
                    self._scores.update(read(os.path.join(self.dir, name)))
                    self._read.add(name)
        return self._scores

    def _next_chunk(self) -> str:
        taken = {n for n in os.listdir(self.dir) if n.endswith(".npz")}
        i = len(taken)
        while f"chunk{i:06d}.npz" in taken:
            i += 1
        return os.path.join(self.dir, f"chunk{i:06d}.npz")

    def scores_for(self, entries: Sequence, ce: bool = True) -> dict:
        """{entry id: ScoredAnswer} for every entry the teacher could score (an unusable reply
        leaves its entry out, logged); asks only for what is not on disk yet."""
        import asyncio

        from comd_jax.distill import pool as pool_lib
        from comd_jax.serve.client import ItemSkipped

        from comd_jax.data import errors

        os.makedirs(self.dir, exist_ok=True)
        stored = self._stored()
        keys = {e.id: content_key(e, self.k) for e in entries}
        tokens = {}
        for e in entries:
            if keys[e.id] in stored:
                continue
            try:
                tokens[e.id] = self.tokenize(e)
            except errors.SampleError as err:  # the student does not train on it either
                logging.warning("teacher scores for %s: not asked, the sample is unusable (%s)", e.id, err)
        todo = [e for e in entries if e.id in tokens]
        for start in range(0, len(todo), CHUNK):
            chunk = todo[start:start + CHUNK]
            requests = [(pool_lib.chat_messages(e, self.images_of(e)) + [{"role": "assistant", "content": e.target}],
                         self.k) for e in chunk]
            self.asked += len(requests)
            replies = asyncio.run(self.client.score_many(requests, skipped_ok=True))
            fresh = {}
            for e, reply in zip(chunk, replies):
                if isinstance(reply, ItemSkipped):
                    logging.warning("teacher scores for %s: %s; trained without them", e.id, reply)
                    continue
                ids, mask = tokens[e.id]
                fresh[keys[e.id]] = align(reply, ids, mask, self.k, f"pool entry {e.id}")
            path = self._next_chunk()
            write(path, fresh)
            stored.update(fresh)
            self._read.add(os.path.basename(path))
        return {e.id: dataclasses.replace(stored[keys[e.id]], ce=ce) for e in entries if keys[e.id] in stored}


def kd_path(train_json: str) -> str:
    """Where a round's scores sit beside its training file."""
    root, _ = os.path.splitext(train_json)
    return root + "_kd.npz"


def load_for(train_json: str) -> Optional[dict]:
    path = kd_path(train_json)
    return read(path) if os.path.exists(path) else None
