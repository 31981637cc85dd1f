"""Per-example predictions saved beside a run (<run dir>/predictions/<split>.jsonl) and the paired bootstrap
over evaluation examples that compares two one-seed runs on the same examples.

A classifier's or regressor's rows are {"i", "pred", "gold"} (harness.train.write_predictions); a generation
task's rows also carry the per-example match that its metric averages (WikiSQL: "logical_form_match"); a causal
task scored by likelihood carries each answer's "nll" (sum over its tokens) and "tokens", from which loss and
perplexity are recomputed on any resample (the ratio of sums, as the run computed them).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np

from harness.report import stats

# metric -> the per-example field averaged by it (generation tasks score text: the match is stored per example)
MATCH_FIELDS = {"logical_form_accuracy": "logical_form_match"}


def load(rec: dict, split: str) -> dict | None:
    """{"pred": array, "gold": array, "match": array | None} of a record's run on `split`, or None if not saved."""
    d = rec.get("_dir")
    if not d:
        return None
    path = Path(d) / "predictions" / f"{split}.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not rows:
        return None
    rows.sort(key=lambda r: r["i"])
    out = {"pred": np.asarray([r.get("pred") for r in rows], dtype=object),
           "gold": np.asarray([r.get("gold") for r in rows], dtype=object), "match": None}
    for field in MATCH_FIELDS.values():
        if field in rows[0]:
            out["match"] = np.asarray([bool(r.get(field)) for r in rows], dtype=float)
    if "subject" in rows[0]:  # MMLU: its accuracy is the mean over subjects
        out["subject"] = np.asarray([str(r.get("subject")) for r in rows], dtype=object)
    if "nll" in rows[0]:
        out["nll"] = np.asarray([float(r["nll"]) for r in rows], dtype=float)
        out["tokens"] = np.asarray([int(r["tokens"]) for r in rows], dtype=float)
    return out


def _hits(p: dict) -> np.ndarray:
    """1.0 where a prediction equals its gold answer (both as stripped text), else 0.0."""
    return np.asarray([str(a).strip() == str(b).strip() for a, b in zip(p["pred"], p["gold"])], dtype=float)


def scorer(metric: str, p: dict) -> Callable[[np.ndarray], float] | None:
    """idx -> the metric on those examples (fraction), for the metrics a bootstrap supports here."""
    if metric in ("loss", "perplexity"):
        if "nll" not in p:
            return None
        nll, tok = p["nll"], p["tokens"]
        if metric == "loss":
            return lambda idx: float(nll[idx].sum() / max(tok[idx].sum(), 1.0))
        return lambda idx: math.exp(min(float(nll[idx].sum() / max(tok[idx].sum(), 1.0)), 50.0))
    if metric in MATCH_FIELDS:
        m = p["match"]
        return None if m is None else (lambda idx: float(m[idx].mean()))
    if metric == "mmlu_accuracy":  # the mean over subjects of each subject's accuracy (harness.metrics.mmlu)
        if "subject" not in p:
            return None
        hit = _hits(p)
        _, code = np.unique(p["subject"].astype(str), return_inverse=True)

        def macro(idx):
            n = np.bincount(code[idx])
            k = np.bincount(code[idx], weights=hit[idx], minlength=len(n))
            return float((k[n > 0] / n[n > 0]).mean())
        return macro
    if metric in ("accuracy", "exact_match", "label_accuracy"):
        hit = _hits(p)
        return lambda idx: float(hit[idx].mean())
    if metric == "pearson":
        x, y = p["pred"].astype(float), p["gold"].astype(float)

        def pearson(idx):
            a, b = x[idx], y[idx]
            if a.std() == 0 or b.std() == 0:
                return 0.0
            return float(np.corrcoef(a, b)[0, 1])
        return pearson
    if metric in ("f1", "matthews_correlation", "spearman"):
        from harness.metrics import METRICS

        fn = METRICS[metric]
        x, y = p["pred"], p["gold"]
        return lambda idx: fn(list(x[idx]), list(y[idx]))
    return None


def runs_bootstrap(a: list[tuple[dict, str]], b: list[tuple[dict, str]], metric: str, scale: float = 100.0,
                   n_boot: int = 2000, seed: int = 0) -> stats.Diff | None:
    """The mean of `metric` (x `scale`) over runs A minus its mean over runs B (none: A's mean alone), each run given
    as (record, split), by a bootstrap over the evaluation examples: every run scored the same examples in the same
    order, so one resample of examples is scored by all of them (the interval is the eval set's sampling error;
    the runs' seeds are averaged, not resampled). None when a run's predictions are missing, the metric is not
    supported, or the runs did not score the same examples."""
    loaded = [load(rec, split) for rec, split in [*a, *b]]
    if not a or any(p is None for p in loaded):
        return None
    gold = [str(x) for x in loaded[0]["gold"]]
    if any(len(p["gold"]) != len(gold) or [str(x) for x in p["gold"]] != gold for p in loaded[1:]):
        return None  # not the same examples in the same order
    fns = [scorer(metric, p) for p in loaded]
    if any(f is None for f in fns):
        return None
    fa, fb = fns[:len(a)], fns[len(a):]

    def diff(idx):
        return scale * (sum(f(idx) for f in fa) / len(fa) - (sum(f(idx) for f in fb) / len(fb) if fb else 0.0))
    d = stats.bootstrap(diff, len(gold), n_boot=n_boot, seed=seed)
    return d if not math.isnan(d.mean) else None


def paired_bootstrap(rec_a: dict, rec_b: dict, split: str, metric: str, scale: float = 100.0,
                     n_boot: int = 2000, seed: int = 0) -> stats.Diff | None:
    """A - B (x `scale`) by a paired bootstrap over the evaluation examples both runs scored, or None when either
    run's predictions are missing, the metric is not supported, or the two did not score the same examples."""
    return runs_bootstrap([(rec_a, split)], [(rec_b, split)], metric, scale, n_boot, seed)


def interval(rec: dict, split: str, metric: str, scale: float = 100.0, n_boot: int = 2000,
             seed: int = 0) -> stats.Diff | None:
    """One run's metric (x `scale`) with a bootstrap interval over its evaluation examples (the sampling error of
    the eval set), or None when its predictions are missing or the metric is not supported."""
    return runs_bootstrap([(rec, split)], [], metric, scale, n_boot, seed)
