"""Label-word accuracy for classification posed as generation (MultiNLI in the LoRA paper's GPT-3 rows); the
reference-based text metrics (ROUGE, BLEU, ...) are in harness/metrics/nlg.py."""

from __future__ import annotations

import re


def first_word(text: str) -> str:
    m = re.search(r"[A-Za-z_]+", text)
    return m.group(0).lower() if m else ""


def label_accuracy(preds: list[str], refs: list[str]) -> float:
    """The first word of the generation equals the reference label word (case-insensitive)."""
    if not preds:
        return float("nan")
    return sum(first_word(p) == first_word(r) for p, r in zip(preds, refs)) / len(preds)
