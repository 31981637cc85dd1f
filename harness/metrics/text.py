"""Text metrics for generations: ROUGE-L (Google's rouge-score, the implementation the instruction-tuning papers
use) and label-word accuracy for classification posed as generation (MultiNLI in the LoRA paper's GPT-3 rows)."""

from __future__ import annotations

import re


def rouge_l(preds: list[str], refs: list[str]) -> float:
    """Mean ROUGE-L F1 over pairs (rouge-score's tokenizer: lower-cased alphanumeric tokens, no stemming)."""
    from rouge_score import rouge_scorer

    if not preds:
        return float("nan")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return sum(scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs)) / len(preds)


def first_word(text: str) -> str:
    m = re.search(r"[A-Za-z_]+", text)
    return m.group(0).lower() if m else ""


def label_accuracy(preds: list[str], refs: list[str]) -> float:
    """The first word of the generation equals the reference label word (case-insensitive)."""
    if not preds:
        return float("nan")
    return sum(first_word(p) == first_word(r) for p, r in zip(preds, refs)) / len(preds)
