"""GLUE metrics, computed with scikit-learn and SciPy (the Hub's `evaluate` GLUE module is unreachable offline).

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
