"""Markdown tables from aggregated configurations, laid out like the papers' tables, paper values beside ours.

Cells read "ours (paper)"; ours is the seed aggregate (median or mean, as the report's scale table says) with
the range over seeds in brackets when there is more than one; the all-configurations table adds n, the mean and
its 95% t-interval, the SD and the failures. "–" = not run / not reported.
"""

from __future__ import annotations

import math
from typing import Iterable

import pandas as pd

from harness import catalog

DASH = "–"
METHOD_LABELS = catalog.titles("method")  # each method's `title` in conf/method/<name>.yaml
BELOW_MARK = "†"  # beside a value below its best baseline (frame.attach_baselines): not evidence for a claim
METRIC_LABELS = {"accuracy": "acc", "matthews_correlation": "MCC", "pearson": "Pearson", "spearman": "Spearman",
                 "f1": "F1", "logical_form_accuracy": "logical-form acc", "execution_accuracy": "execution acc",
                 "exact_match": "exact match", "rouge_l": "ROUGE-L", "label_accuracy": "acc",
                 "perplexity": "perplexity", "loss": "loss", "bleu": "BLEU", "nist": "NIST", "meteor": "METEOR",
                 "rouge_l_coco": "ROUGE-L", "cider": "CIDEr", "rouge_1": "ROUGE-1", "rouge_2": "ROUGE-2",
                 "exact_match_any": "exact match"}
TASK_LABELS = catalog.titles("task")  # each task's `title` in conf/task/<name>.yaml
# our task -> the paper's task of the same kind in the GPT-3 tables (5, 6)
PAPER_TASK = {"mnli": "mnli", "mnli_gen": "mnli", "wikisql": "wikisql", "wikisql_full": "wikisql"}


def targets_label(t) -> str:
    if t is None or (isinstance(t, float) and math.isnan(t)) or t == "-":
        return DASH
    if t == "all_linear":
        return "all linear"
    return ",".join(f"W{c}" for c in str(t))


def num(v, digits: int = 1) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return DASH
    return f"{v:.{digits}f}"


def _isnum(v) -> bool:
    return v is not None and v is not pd.NA and not (isinstance(v, float) and math.isnan(v))


def failures(row) -> str:
    """Seeds that failed, collapsed to a constant predictor or ended below the best baseline, out of all runs of
    the configuration ("" when none): an aggregate never hides them."""
    if row is None:
        return ""
    n, failed = int(row.get("n") or row.get("seeds") or 0), int(row.get("failed") or 0)
    total = n + failed
    parts = [f"{failed} of {total} failed"] if failed else []
    for key, word in (("collapsed", "collapsed"), ("seeds_below", "below baseline")):
        v = row.get(key)
        if _isnum(v) and int(v) > 0:
            parts.append(f"{int(v)} of {total} {word}")
    return ", ".join(parts)


# decimals a metric is printed with: x100 scores to 0.1 point; a perplexity or a loss near 1-5 needs more
DIGITS = {"perplexity": 2, "loss": 3}


def digits(row) -> int:
    return DIGITS.get(str((row or {}).get("metric")), 1)


def ours(row) -> str:
    """The seed aggregate with the range over seeds, e.g. '76.3 [75.9–76.8]' ('76.3' for one seed), † below the
    best baseline, and any failed / collapsed seeds."""
    if row is None:
        return DASH
    k = digits(row)
    s = num(row["value"], k)
    if s != DASH and row.get("seeds", 1) > 1:
        s += f" [{num(row['min'], k)}–{num(row['max'], k)}]"
    if s != DASH and row.get("vs_baseline") == "below baseline":
        s += BELOW_MARK
    f = failures(row)
    if f:
        s += f" ({f})"
    return s


def mean_ci(row) -> str:
    """'76.4 [75.1, 77.7]': the mean over seeds and its 95% t-interval (n-1 degrees of freedom)."""
    if row is None or not _isnum(row.get("mean")):
        return DASH
    k = digits(row)
    if not _isnum(row.get("ci_lo")):
        return f"{num(row['mean'], k)} (n=1)"
    return f"{num(row['mean'], k)} [{num(row['ci_lo'], k)}, {num(row['ci_hi'], k)}]"


def beside(row, paper) -> str:
    o = ours(row)
    if paper is None:
        return o
    return f"{o} ({num(paper)})"


def human(n) -> str:
    if n is None or n is pd.NA or (isinstance(n, float) and math.isnan(n)):
        return DASH
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def kib(n) -> str:
    return DASH if n is None or (isinstance(n, float) and math.isnan(n)) else f"{n / 1024:.0f}"


def md_table(header: list[str], rows: Iterable[list], align: list[str] | None = None) -> str:
    align = align or ["l"] + ["r"] * (len(header) - 1)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def cost_cells(row) -> list[str]:
    pct = row.get("trainable_pct")
    return [
        f"{human(row.get('trainable'))} ({num(pct, 2)}%)" if pct is not None else human(row.get("trainable")),
        num(row.get("peak_mb"), 0), num(row.get("tokens_per_s"), 0), num(row.get("train_s"), 0),
        kib(row.get("adapter_bytes")),
    ]


COST_HEADER = ["Trainable (%)", "Peak MiB", "Tokens/s", "Train s", "Adapter KiB"]


def metric_name(agg: pd.DataFrame, task: str) -> str:
    m = agg.loc[agg["task"] == task, "metric"]
    return METRIC_LABELS.get(m.iloc[0], m.iloc[0]) if len(m) else ""


def find(agg: pd.DataFrame, **eq) -> dict | None:
    """The first aggregated row whose columns equal the given values (missing values never match), or None."""
    m = pd.Series(True, index=agg.index)
    for k, v in eq.items():
        m &= agg[k].astype(object).map(lambda x, v=v: x is not pd.NA and x is not None and x == v).astype(bool)
    sub = agg[m]
    return None if sub.empty else sub.iloc[0].to_dict()


# ------------------------------------------------------------------------------------------- all configs
def all_configs(agg: pd.DataFrame) -> str:
    with_base = "vs_baseline" in agg and agg["vs_baseline"].notna().any()
    with_curve = "curve" in agg and any(isinstance(c, dict) and len(c) > 1 for c in agg["curve"])
    with_best = "best" in agg and any(_isnum(b) and _isnum(v) and abs(b - v) > 1e-9
                                      for b, v in zip(agg["best"], agg["value"]))
    # the compute dtype, where the grid sweeps it (conf/experiment/compute_dtype.yaml)
    with_dtype = "compute_dtype" in agg and agg["compute_dtype"].dropna().nunique() > 1
    header = ["Task", "Model", "Method", *(["Compute"] if with_dtype else []), "Targets", "r", "alpha", "lr", "n",
              "Metric", "Ours (final)",
              "Mean [95% t-CI]", "SD", *(["Best eval during training"] if with_best else []),
              *(["Best baseline", "vs baseline", "− baseline [95% CI]"] if with_base else []),
              *(["Eval curve (step: value)"] if with_curve else []), *COST_HEADER]
    rows = []
    sort = agg.sort_values(["task", "model", "method", "targets", "r"], na_position="first", kind="stable")
    for _, r in sort.iterrows():
        r = r.to_dict()
        lr = r["lr"] if r["lr"] is not None and not (isinstance(r["lr"], float) and math.isnan(r["lr"])) else None
        base = []
        if with_base:
            bv = r.get("baseline_value")
            base = [DASH if bv is None or pd.isna(bv) else
                    f"{num(bv, digits(r))} ({METHOD_LABELS.get(r['baseline_method'], r['baseline_method'])})",
                    r.get("vs_baseline") or DASH, (r.get("vs_baseline_diff") or DASH).split(" (")[0]]
        rows.append([TASK_LABELS.get(r["task"], r["task"]), r["model"], METHOD_LABELS.get(r["method"], r["method"]),
                     *([DASH if pd.isna(r.get("compute_dtype")) else r["compute_dtype"]] if with_dtype else []),
                     targets_label(r["targets"]), num(r["r"], 0) if r["r"] is not pd.NA else DASH,
                     num(r["alpha"], 0) if r["alpha"] is not pd.NA else DASH, f"{lr:.0e}" if lr else DASH,
                     r["seeds"], METRIC_LABELS.get(r["metric"], r["metric"]), ours(r), mean_ci(r),
                     num(r.get("sd"), digits(r)) if _isnum(r.get("sd")) else DASH,
                     *([num(r.get("best"), digits(r))] if with_best else []), *base,
                     *([", ".join(f"{s}: {num(v, digits(r))}" for s, v in (r.get("curve") or {}).items()) or DASH]
                       if with_curve else []), *cost_cells(r)])
    if "trained" in agg and len(agg) and not agg["trained"].fillna(True).astype(bool).any():
        # evaluation only: no seeds, no training: columns that would mean nothing are left out
        drop = {"r", "alpha", "lr", "n", "Mean [95% t-CI]", "SD", "Trainable (%)", "Tokens/s", "Train s",
                "Adapter KiB", "Targets"}
        keep = [i for i, h in enumerate(header) if h not in drop]
        header, rows = [header[i] for i in keep], [[row[i] for i in keep] for row in rows]
    return md_table(header, rows, ["l", "l", "l"] + ["r"] * (len(header) - 3))


def baselines_table(base: pd.DataFrame) -> str:
    """The baseline runs that the configurations of a report are compared with."""
    header = ["Task", "Model", "Baseline", "Eval split (examples)", "Metric", "Value [min–max]", "Mean [95% t-CI]",
              "n", "Experiment"]
    rows = []
    for _, r in base.sort_values(["task", "model", "method"], kind="stable").iterrows():
        r = r.to_dict()
        rows.append([TASK_LABELS.get(r["task"], r["task"]), DASH if r["method"] == "majority" else r["model"],
                     METHOD_LABELS.get(r["method"], r["method"]), f"{r['split']} ({int(r['eval_examples'])})",
                     METRIC_LABELS.get(r["metric"], r["metric"]), ours(r), mean_ci(r),
                     r["seeds"], r["experiment"]])
    return md_table(header, rows, ["l", "l", "l", "l", "l", "r", "r", "r", "l"])


# ------------------------------------------------------------------------------------------- LoRA Table 2


# ------------------------------------------------------------------------------------------- LoRA Table 3


# ------------------------------------------------------------------------------------------- LoRA Table 5


# ------------------------------------------------------------------------------------------- LoRA Table 6


# ------------------------------------------------------------------------------------------- QLoRA Table 3


# ------------------------------------------------------------------------------------------- QLoRA Table 2


# ------------------------------------------------------------------------------------------- QLoRA Table 4
