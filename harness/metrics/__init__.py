"""Metrics, computed locally (the Hub's `evaluate` GLUE module is unreachable offline).

GLUE metrics (scikit-learn, SciPy) are below. Causal-LM tasks score text: generation metrics take lists of
predicted and reference strings (harness/metrics/sql.py for WikiSQL, harness/metrics/text.py for ROUGE-L and
label words); `loss` and `perplexity` come from the held-out answer tokens; multiple choice uses `accuracy`.

Each metric takes (predictions, references) as 1-D arrays — class ids for classification, floats for
regression — and returns a float. Values are fractions (0..1), as the GLUE metric modules return them;
reports multiply by 100 where the papers do.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def accuracy(pred, ref) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(ref, pred))


def f1(pred, ref) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(ref, pred))


def matthews_correlation(pred, ref) -> float:
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(ref, pred))


def _constant(x) -> bool:
    return bool(np.all(np.asarray(x) == np.asarray(x).flat[0]))


def pearson(pred, ref) -> float:
    from scipy.stats import pearsonr

    if _constant(pred) or _constant(ref):  # undefined: a constant predictor carries no correlation
        return 0.0
    return float(pearsonr(pred, ref)[0])


def spearman(pred, ref) -> float:
    from scipy.stats import spearmanr

    if _constant(pred) or _constant(ref):
        return 0.0
    return float(spearmanr(pred, ref)[0])


METRICS: dict[str, Callable] = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearman": spearman,
}


# causal-LM tasks: scored on generated text (GENERATION) or on the held-out answer tokens' likelihood (LIKELIHOOD)
GENERATION = ("logical_form_accuracy", "execution_accuracy", "exact_match", "rouge_l", "label_accuracy")
LIKELIHOOD = ("loss", "perplexity")


LOWER_IS_BETTER = ("loss", "perplexity")


def higher_is_better(name: str) -> bool:
    return name not in LOWER_IS_BETTER


def score_generations(names: list[str], preds: list[str], refs: list[str], table_ids=None, tables=None) -> dict:
    """Generation metrics over (prediction, reference) texts. execution_accuracy needs `tables` (WikiSQL table
    id -> header/types/rows) and each example's table id."""
    from harness.metrics import sql, text

    preds = [p.strip() for p in preds]
    refs = [r.strip() for r in refs]
    n = max(len(preds), 1)
    out: dict[str, float] = {}
    for name in names:
        if name == "logical_form_accuracy":
            out[name] = sum(sql.logical_form_match(p, r) for p, r in zip(preds, refs)) / n
        elif name == "exact_match":
            out[name] = sum(sql.exact_match(p, r) for p, r in zip(preds, refs)) / n
        elif name == "execution_accuracy":
            if not tables or table_ids is None:
                raise ValueError("execution_accuracy needs the WikiSQL tables (task.tables / <split>.tables.jsonl)")
            db = sql.TableDB(tables)
            out[name] = sum(db.execution_match(p, r, t) for p, r, t in zip(preds, refs, table_ids)) / n
        elif name == "rouge_l":
            out[name] = text.rouge_l(preds, refs)
        elif name == "label_accuracy":
            out[name] = text.label_accuracy(preds, refs)
    return out


def metrics_for(kind: str) -> tuple[str, ...]:
    """The metric names a task of this kind may list."""
    if kind in ("classification", "regression"):
        return tuple(METRICS)
    if kind == "generation":
        return GENERATION + LIKELIHOOD
    if kind == "multiple_choice":
        return ("accuracy",)
    raise ValueError(f"unknown task kind {kind!r}")


def compute(names: list[str], pred, ref) -> dict[str, float]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    return {n: METRICS[n](pred, ref) for n in names}


def majority_baseline(names: list[str], train_labels, eval_labels, regression: bool) -> dict[str, float]:
    """The score of always predicting the train split's majority class (or mean, for regression)."""
    train_labels = np.asarray(train_labels)
    if regression:
        const = np.full(len(eval_labels), float(train_labels.mean()))
    else:
        values, counts = np.unique(train_labels, return_counts=True)
        const = np.full(len(eval_labels), values[counts.argmax()])
    return compute(names, const, eval_labels)
