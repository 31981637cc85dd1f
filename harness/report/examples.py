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
    if "nll" in rows[0]:
        out["nll"] = np.asarray([float(r["nll"]) for r in rows], dtype=float)
        out["tokens"] = np.asarray([int(r["tokens"]) for r in rows], dtype=float)
    return out


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
    if metric in ("accuracy", "exact_match", "label_accuracy"):
        hit = np.asarray([str(a).strip() == str(b).strip() for a, b in zip(p["pred"], p["gold"])], dtype=float)
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


def paired_bootstrap(rec_a: dict, rec_b: dict, split: str, metric: str, scale: float = 100.0,
                     n_boot: int = 2000, seed: int = 0) -> stats.Diff | None:
    """A - B (x `scale`) by a paired bootstrap over the evaluation examples both runs scored, or None when either
    run's predictions are missing, the metric is not supported, or the two did not score the same examples."""
    pa, pb = load(rec_a, split), load(rec_b, split)
    if pa is None or pb is None or len(pa["gold"]) != len(pb["gold"]):
        return None
    if any(str(x) != str(y) for x, y in zip(pa["gold"], pb["gold"])):
        return None  # not the same examples in the same order
    fa, fb = scorer(metric, pa), scorer(metric, pb)
    if fa is None or fb is None:
        return None
    d = stats.bootstrap(lambda idx: scale * (fa(idx) - fb(idx)), len(pa["gold"]), n_boot=n_boot, seed=seed)
    return d if not math.isnan(d.mean) else None


def interval(rec: dict, split: str, metric: str, scale: float = 100.0, n_boot: int = 2000,
             seed: int = 0) -> stats.Diff | None:
    """One run's metric (x `scale`) with a bootstrap interval over its evaluation examples (the sampling error of
    the eval set), or None when its predictions are missing or the metric is not supported."""
    p = load(rec, split)
    f = scorer(metric, p) if p is not None else None
    if f is None:
        return None
    d = stats.bootstrap(lambda idx: scale * f(idx), len(p["gold"]), n_boot=n_boot, seed=seed)
    return d if not math.isnan(d.mean) else None
