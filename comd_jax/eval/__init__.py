"""Evaluation: ScienceQA (LLaVA's eval format), LLaVA-Bench-style judged scores,
the offline world's per-skill scores, and round-by-round reports.

Evaluators talk to models only through `answerer.Answerer`, so the in-process
greedy decoder, the serving engine or a remote teacher are interchangeable.
"""
