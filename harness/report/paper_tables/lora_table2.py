"""LoRA Table 2: RoBERTa/DeBERTa on GLUE, LoRA against full fine-tuning and the other adaptation baselines.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`lora_table2`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: lora_table2).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.report import stats
from harness.report.claims import Claim, DELTA, diff, _dtext, _fmt, lora_reference, memory_full_above_lora, REASONS
from harness.report.tables import beside, DASH, find, human, md_table, METHOD_LABELS, num

TABLE = "lora_table2"


def mirror(agg: pd.DataFrame, paper: dict) -> str:
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


def table2_lora_matches_full(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "LoRA Table 2, section 5.3"
    for model, g in agg.groupby("model"):
        ds, text, trainable = [], [], None
        for task, gt in g.groupby("task"):
            full = find(gt, method="full")
            lora = lora_reference(gt)
            if full is None or lora is None:
                continue
            d = diff(lora, full)
            ds.append(d)
            text.append(f"{task}: LoRA {_fmt(lora['value'])} vs full {_fmt(full['value'])}, LoRA − full {_dtext(d)}")
            trainable = lora["trainable_pct"]
        parts = [stats.noninferior(d, DELTA, parts=len(ds)) for d in ds]
        if parts:
            label, where = (f"{text[0].split(':')[0]}/{model}", "") if len(parts) == 1 else (model, " on every task")
            out.append(Claim("lora_table2", f"{label}: LoRA matches or exceeds full fine-tuning{where} (within "
                             f"{DELTA:g} point, or better) while training {trainable:.2f}% of the parameters",
                             stats.all_of(parts), "; ".join(text) + ".", src, DELTA, None, REASONS["lora_table2"]))
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table2_lora_matches_full, memory_full_above_lora]
GATED = (table2_lora_matches_full,)
