"""Metrics, computed locally (the Hub's `evaluate` GLUE module is unreachable offline).

GLUE metrics are below (NumPy, as scikit-learn defines them; SciPy for the correlations). Causal-LM tasks score
text: generation metrics take the predicted strings and, per input, one reference or several (harness/metrics/sql.py
for WikiSQL; harness/metrics/nlg.py for BLEU, NIST, METEOR, ROUGE, CIDEr and exact match against any reference;
harness/metrics/text.py for label words); `loss` and `perplexity` come from the held-out answer tokens; multiple
choice uses `accuracy`.

Each metric takes (predictions, references) as 1-D arrays — class ids for classification, floats for
regression — and returns a float. Values are fractions (0..1), as the GLUE metric modules return them;
reports multiply by 100 where the papers do.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


# accuracy, F1 and MCC in NumPy, as scikit-learn defines them (tests/test_metrics.py checks them against it):
# importing sklearn.metrics costs ~1.2 s, paid by every run's process (25 of them in make sanity)
def accuracy(pred, ref) -> float:
    pred, ref = np.asarray(pred), np.asarray(ref)
    return float(np.mean(pred == ref)) if len(ref) else 0.0


def f1(pred, ref) -> float:
    """Binary F1 of class 1; 0 when there is no positive in either (scikit-learn's zero_division default)."""
    pred, ref = np.asarray(pred) == 1, np.asarray(ref) == 1
    tp = int(np.sum(pred & ref))
    denom = 2 * tp + int(np.sum(pred & ~ref)) + int(np.sum(~pred & ref))
    return 2.0 * tp / denom if denom else 0.0


def matthews_correlation(pred, ref) -> float:
    """Matthews correlation for any number of classes (Gorodkin's R_K, scikit-learn's matthews_corrcoef); 0 when
    either side is constant."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    classes, idx = np.unique(np.concatenate([ref, pred]), return_inverse=True)
    k, n = len(classes), len(ref)
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (idx[:n], idx[n:]), 1)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    correct, total = np.trace(cm), cm.sum()
    cov_ytyp = correct * total - np.dot(t_sum, p_sum)
    cov_ypyp = total**2 - np.dot(p_sum, p_sum)
    cov_ytyt = total**2 - np.dot(t_sum, t_sum)
    if cov_ypyp * cov_ytyt == 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(cov_ytyt * cov_ypyp))


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
# (harness/metrics/nlg.py's registry: every metric a task scoring text against references may list)
GENERATION = ("logical_form_accuracy", "execution_accuracy", "exact_match", "label_accuracy", "bleu", "nist",
              "meteor", "rouge_l_coco", "cider", "rouge_1", "rouge_2", "rouge_l", "exact_match_any")
LIKELIHOOD = ("loss", "perplexity")


LOWER_IS_BETTER = ("loss", "perplexity")


def higher_is_better(name: str) -> bool:
    return name not in LOWER_IS_BETTER


def score_generations(names: list[str], preds: list[str], refs: list, table_ids=None, tables=None) -> dict:
    """Generation metrics over predicted texts and, per input, a reference text or a list of references (a task
    with task.group_by: every reference of the input). WikiSQL's metrics and label accuracy compare with the first
    reference; execution_accuracy needs `tables` (WikiSQL table id -> header/types/rows) and each input's table id."""
    from harness.metrics import nlg, sql, text

    preds = [p.strip() for p in preds]
    ref_lists = [[r.strip() for r in (rs if isinstance(rs, (list, tuple)) else [rs])] for rs in refs]
    first = [rs[0] if rs else "" for rs in ref_lists]
    n = max(len(preds), 1)
    out: dict[str, float] = {}
    for name in names:
        if name == "logical_form_accuracy":
            out[name] = sum(sql.logical_form_match(p, r) for p, r in zip(preds, first)) / n
        elif name == "exact_match":
            out[name] = sum(sql.exact_match(p, r) for p, r in zip(preds, first)) / n
        elif name == "execution_accuracy":
            if not tables or table_ids is None:
                raise ValueError("execution_accuracy needs the WikiSQL tables (task.tables / <split>.tables.jsonl)")
            db = sql.TableDB(tables)
            out[name] = sum(db.execution_match(p, r, t) for p, r, t in zip(preds, first, table_ids)) / n
        elif name == "label_accuracy":
            out[name] = text.label_accuracy(preds, first)
    rest = [name for name in names if name in nlg.METRICS]
    if rest:
        out.update(nlg.score(rest, preds, ref_lists))
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
