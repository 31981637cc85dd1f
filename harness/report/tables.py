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


def ours(row) -> str:
    """The seed aggregate with the range over seeds, e.g. '76.3 [75.9–76.8]' ('76.3' for one seed), † below the
    best baseline, and any failed / collapsed seeds."""
    if row is None:
        return DASH
    s = num(row["value"])
    if s != DASH and row.get("seeds", 1) > 1:
        s += f" [{num(row['min'])}–{num(row['max'])}]"
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
    if not _isnum(row.get("ci_lo")):
        return f"{num(row['mean'])} (n=1)"
    return f"{num(row['mean'])} [{num(row['ci_lo'])}, {num(row['ci_hi'])}]"


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
    header = ["Task", "Model", "Method", "Targets", "r", "alpha", "lr", "n", "Metric", "Ours (final)",
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
                    f"{num(bv)} ({METHOD_LABELS.get(r['baseline_method'], r['baseline_method'])})",
                    r.get("vs_baseline") or DASH, (r.get("vs_baseline_diff") or DASH).split(" (")[0]]
        rows.append([TASK_LABELS.get(r["task"], r["task"]), r["model"], METHOD_LABELS.get(r["method"], r["method"]),
                     targets_label(r["targets"]), num(r["r"], 0) if r["r"] is not pd.NA else DASH,
                     num(r["alpha"], 0) if r["alpha"] is not pd.NA else DASH, f"{lr:.0e}" if lr else DASH,
                     r["seeds"], METRIC_LABELS.get(r["metric"], r["metric"]), ours(r), mean_ci(r),
                     num(r.get("sd")) if _isnum(r.get("sd")) else DASH,
                     *([num(r.get("best"))] if with_best else []), *base,
                     *([", ".join(f"{s}: {num(v)}" for s, v in (r.get("curve") or {}).items()) or DASH]
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
def lora_table2(agg: pd.DataFrame, paper: dict) -> str:
    tasks = paper["tasks"]
    header = ["Model & method", "#Trainable", *[paper["task_labels"][t] for t in tasks], "Avg (tasks run)"]
    rows = []
    for (model, method), g in agg.groupby(["model", "method"], sort=False):
        ref_model = paper["reference_model"].get(model, paper["reference_model"]["default"])
        prow = next((p for p in paper["rows"] if p["model"] == ref_model and p["method"] == method
                     and p.get("beside", True)), None)
        cells, ours_vals, paper_vals = [], [], []
        for t in tasks:
            r = find(g, task=t)
            pv = (prow or {}).get("values", {}).get(t)
            cells.append(beside(r, pv) if r else f"{DASH} ({num(pv)})" if pv is not None else DASH)
            if r and not math.isnan(r["value"]):
                ours_vals.append(r["value"])
                if pv is not None:
                    paper_vals.append(pv)
        avg = sum(ours_vals) / len(ours_vals) if ours_vals else math.nan
        pavg = sum(paper_vals) / len(paper_vals) if paper_vals and len(paper_vals) == len(ours_vals) else None
        first = g.iloc[0].to_dict()
        label = f"{model} {METHOD_LABELS.get(method, method)}"
        trainable = f"{human(first['trainable'])} ({(prow or {}).get('trainable', DASH)})"
        rows.append([label, trainable, *cells, f"{num(avg)} ({num(pavg)})"])
    for p in paper["rows"]:  # every row of the paper's table, as published
        spread = p.get("spread") or {}
        rows.append([f"paper: {p['label']}", p["trainable"],
                     *[num(p["values"].get(t)) + (f" ±{spread[t]}" if t in spread else "") for t in tasks],
                     num(p.get("avg"))])
    return md_table(header, rows)


# ------------------------------------------------------------------------------------------- LoRA Table 3
def e2e_value(name: str, v: float | None, paper: dict) -> float | None:
    """A metric on the paper's scale: BLEU, METEOR, ROUGE-L x100; NIST and CIDEr as they are."""
    return None if v is None else v * (100.0 if name in paper["percent"] else 1.0)


def e2e_num(name: str, v, paper: dict) -> str:
    return num(v, 1 if name in paper["percent"] else 2)


def lora_table3(agg: pd.DataFrame, paper: dict) -> str:
    """Every E2E metric per method: the median over seeds [min–max], the paper's GPT-2 M row of the method beside."""
    names = paper["metrics"]
    header = ["Model & method", "#Trainable", "Seeds", *[paper["metric_labels"][m] for m in names]]
    rows = []
    for _, r in agg.iterrows():
        r = r.to_dict()
        prow = next((p for p in paper["rows"] if p["model"] == paper["reference_model"] and p["method"] == r["method"]
                     and p.get("beside", True)), None)
        cells = []
        for m in names:
            vals = [e2e_value(m, v, paper) for v in (r.get("metric_values") or {}).get(m, {}).values()]
            pv = (prow or {}).get("values", {}).get(m)
            if not vals:
                cells.append(DASH)
                continue
            s = pd.Series(vals)
            cell = e2e_num(m, s.median(), paper)
            if len(vals) > 1:
                cell += f" [{e2e_num(m, s.min(), paper)}–{e2e_num(m, s.max(), paper)}]"
            cells.append(cell + (f" ({e2e_num(m, pv, paper)})" if pv is not None else ""))
        label = f"{r['model']} {METHOD_LABELS.get(r['method'], r['method'])}"
        if r.get("targets") not in (None, "-") and not pd.isna(r.get("r")):
            label += f" ({targets_label(r['targets'])}, r={int(r['r'])})"
        trainable = human(r["trainable"]) if r["method"] not in ("zero_shot", "majority") else "0"
        rows.append([label, f"{trainable} ({(prow or {}).get('trainable', DASH)})", str(int(r["seeds"])), *cells])
    for p in paper["rows"]:
        spread = p.get("spread") or {}
        rows.append([f"paper: {p['label']}", p["trainable"], DASH,
                     *[e2e_num(m, p["values"].get(m), paper) + (f" ±{spread[m]:g}" if m in spread else "")
                       for m in names]])
    return md_table(header, rows, ["l", "r", "r"] + ["r"] * len(names))


# ------------------------------------------------------------------------------------------- LoRA Table 5
def lora_table5(agg: pd.DataFrame, paper: dict) -> str:
    targets = paper["targets"]
    header = ["Weight type", *[targets_label(t) for t in targets]]
    rows = [["rank r, ours (paper)", *[f"{num((find(agg, targets=t) or {}).get('r'), 0)} ({paper['ranks'][t]})"
                                       for t in targets]]]
    for (task, model), g in agg.groupby(["task", "model"], sort=False):
        ptask = PAPER_TASK.get(task)
        label = f"{TASK_LABELS.get(task, task)} {metric_name(agg, task)}, ours ({model})"
        if ptask:
            label += f" (paper {paper['model']} {paper['tasks'][ptask]})"
        rows.append([label, *[beside(find(g, targets=t), paper["values"][ptask][t] if ptask else None)
                              for t in targets]])
    for ptask, name in paper["tasks"].items():
        rows.append([f"paper: {name} (±{paper['spread'][ptask]}), {paper['model']}",
                     *[num(paper["values"][ptask][t]) for t in targets]])
    return md_table(header, rows)


# ------------------------------------------------------------------------------------------- LoRA Table 6
def lora_table6(agg: pd.DataFrame, paper: dict) -> str:
    ranks = paper["ranks"]
    extra = sorted(set(int(r) for r in agg["r"].dropna()) - set(ranks))
    cols = ranks + extra
    header = ["Task", "Weight type", *[f"r={r}" for r in cols]]
    rows = []
    for (task, model), g in agg.groupby(["task", "model"], sort=False):
        ptask = PAPER_TASK.get(task)
        for t in paper["targets"]:
            pv = paper["values"][ptask][t] if ptask else {}
            label = f"{TASK_LABELS.get(task, task)} {metric_name(agg, task)}, ours ({model})"
            rows.append([label, targets_label(t), *[beside(find(g, targets=t, r=r), pv.get(r)) for r in cols]])
    for ptask, name in paper["tasks"].items():
        for t in paper["targets"]:
            rows.append([f"paper: {name} (±{paper['spread'][ptask]}), {paper['model']}", targets_label(t),
                         *[num(paper["values"][ptask][t].get(r)) for r in cols]])
    return md_table(header, rows, ["l", "l"] + ["r"] * len(cols))


# ------------------------------------------------------------------------------------------- QLoRA Table 3
def qlora_table3(agg: pd.DataFrame, paper: dict) -> str:
    tasks = list(dict.fromkeys(agg["task"]))
    pcols = paper["columns"]
    header = ["Data type", *[f"ours: {TASK_LABELS.get(t, t)} {metric_name(agg, t)}" for t in tasks],
              f"paper: {pcols['glue_roberta_large']}", "paper: T5 80M / 250M / 780M / 3B / 11B", *COST_HEADER]
    rows = []
    for prow in paper["rows"]:
        g = agg[agg["method"] == prow["method"]] if prow.get("method") else agg.iloc[0:0]
        v = prow.get("values", {})
        if g.empty and not v:
            continue  # a row of ours only (not in the paper) that did not run
        t5 = " / ".join(num(v.get(k)) for k in ("t5_80m", "t5_250m", "t5_780m", "t5_3b", "t5_11b"))
        if g.empty:  # the paper's row beside nothing of ours: not run here
            what = "not run here" if prow.get("method") else "no counterpart here"
            rows.append([f"{prow['label']} — ours: {what}", *[DASH for _ in tasks],
                         num(v.get("glue_roberta_large")), t5, *[DASH] * len(COST_HEADER)])
            continue
        first = g.iloc[0].to_dict()
        dtype = first.get("compute_dtype") or ""
        label = f"{prow['label']} — ours: {METHOD_LABELS.get(prow['method'], prow['method'])}, {dtype} compute"
        rows.append([label, *[ours(find(g, task=t)) for t in tasks], num(v.get("glue_roberta_large")),
                     t5 if v else DASH, *cost_cells(first)])
    return md_table(header, rows)


# ------------------------------------------------------------------------------------------- QLoRA Table 2
def qlora_table2(agg: pd.DataFrame, paper: dict) -> str:
    """Each storage type's zero-shot quality (perplexity, or a task metric where higher is better), with its 95%
    bootstrap interval over the eval examples and the paired difference from fp32 where predictions were saved, the
    per-layer reconstruction error of the simulated types, and what the linear layers hold."""
    from harness.report import examples

    header = ["Data type", "Ours: task, model", "Ours: metric [95% CI]", "− fp32 [95% CI]",
              "Rel. error per layer", "Bits/param (linear layers)", "Linear layers MiB", "Paper: mean PPL"]
    rows = []
    for (task, model), g in agg.groupby(["task", "model"], sort=False):
        ref = find(g, method="full")
        for prow in paper["rows"]:
            r = find(g, method=prow["method"])
            if r is None:
                continue
            split, metric = r["split"], r["metric"]
            scale = 100.0 if r.get("higher_better", True) else 1.0
            digits = 1 if scale == 100.0 else 2
            one = {"_dir": next(iter((r.get("dirs") or {}).values()), None)}
            ci = examples.interval(one, split, metric, scale)
            cell = num(r["value"], digits) + (f" [{num(ci.interval()[0], digits)}, {num(ci.interval()[1], digits)}]"
                                               if ci is not None else "")
            delta = DASH
            if ref is not None and r["method"] != ref["method"]:
                d = examples.paired_bootstrap(one, {"_dir": next(iter((ref.get("dirs") or {}).values()), None)},
                                              split, metric, scale)
                delta = f"{r['value'] - ref['value']:+.{digits}f}" + (
                    f" [{d.interval()[0]:+.{digits}f}, {d.interval()[1]:+.{digits}f}]" if d is not None else "")
            mb = r.get("linear_bytes")
            err = r.get("rel_error")
            simulated = bool(r.get("fake_quant")) and not pd.isna(r.get("fake_quant"))
            rows.append([prow["label"], f"{TASK_LABELS.get(task, task)} {METRIC_LABELS.get(metric, metric)}, {model}",
                         cell, delta, DASH if err is None or pd.isna(err) else f"{100 * err:.1f}%",
                         f"{num(r.get('bits_simulated'), 3)} (simulated)" if simulated else num(r.get("bits_per_param"), 3),
                         "–" if simulated else num(None if mb is None else mb / 2 ** 20, 1), num(prow.get("value"), 2)])
    return md_table(header, rows, ["l", "l"] + ["r"] * 6)


# ------------------------------------------------------------------------------------------- QLoRA Table 4
def qlora_table4(agg: pd.DataFrame, paper: dict) -> str:
    """MMLU before and after instruction tuning, per base data type."""
    cols = paper["columns"]
    header = ["Data type", "Ours: task, model", "MMLU before", "MMLU after", "Change", "Held-out perplexity",
              f"Paper: {cols['llama7b_alpaca']}", f"Paper: {cols['mean']}", *COST_HEADER]
    rows = []
    for (task, model), g in agg.groupby(["task", "model"], sort=False):
        for prow in paper["rows"]:
            r = find(g, method=prow["method"])
            if r is None:
                continue
            after = num(r.get("mmlu_after"))
            if r.get("seeds", 1) > 1 and after != DASH:
                after += f" ±{r['mmlu_after_spread']:.1f}"
            before, aft = r.get("mmlu_before"), r.get("mmlu_after")
            change = f"{aft - before:+.1f}" if before is not None and aft is not None and not (
                math.isnan(before) or math.isnan(aft)) else DASH
            v = prow.get("values", {})
            rows.append([prow["label"], f"{TASK_LABELS.get(task, task)}, {model}", num(before), after, change,
                         num(r["value"], 2) if r.get("metric") == "perplexity" else DASH,
                         num(v.get("llama7b_alpaca")), num(v.get("mean")), *cost_cells(r)])
    return md_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))


MIRRORS = {"lora_table2": lora_table2, "lora_table3": lora_table3, "lora_table5": lora_table5, "lora_table6": lora_table6,
           "qlora_table3": qlora_table3, "qlora_table2": qlora_table2, "qlora_table4": qlora_table4}
