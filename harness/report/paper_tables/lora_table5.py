"""LoRA Table 5: which weight matrices to adapt at a fixed budget of trainable parameters.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`lora_table5`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: lora_table5).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.report import stats
from harness.report.claims import _best, Claim, diff, _dtext, _fmt, SCALE_REASON
from harness.report.tables import beside, find, md_table, metric_name, num, PAPER_TASK, targets_label, TASK_LABELS

TABLE = "lora_table5"


def mirror(agg: pd.DataFrame, paper: dict) -> str:
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


def table5_more_types_lower_rank(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "LoRA Table 5, section 7.1"
    for (task, model), g in agg[agg["method"] == "lora"].groupby(["task", "model"]):
        v = {t: find(g, targets=t) for t in ("q", "k", "v", "o", "qk", "qv", "qkvo")}
        v = {t: x for t, x in v.items() if x is not None and not math.isnan(x["value"])}
        single = {t: v[t] for t in "qkvo" if t in v}
        multi = {t: v[t] for t in ("qv", "qkvo") if t in v}
        if single and multi:
            bm, bs = _best(multi), _best(single)
            d = diff(multi[bm], single[bs])
            out.append(Claim("lora_table5", f"{task}/{model}: at a fixed budget of trainable parameters, adapting "
                             "Wq,Wv (or all four) beats any single weight type at a higher rank", stats.beats(d),
                             f"best multi-type {targets_label(bm)} (r={int(multi[bm]['r'])}) {_fmt(multi[bm]['value'])}; "
                             f"best single {targets_label(bs)} (r={int(single[bs]['r'])}) {_fmt(single[bs]['value'])}; "
                             f"difference {_dtext(d)}.", src, None, d, SCALE_REASON))
        if "qv" in v and ("q" in v or "k" in v):
            parts = {t: diff(v["qv"], v[t]) for t in "qk" if t in v}
            out.append(Claim("lora_table5", f"{task}/{model}: Wq alone and Wk alone are significantly lower than "
                             "Wq,Wv", stats.all_of([stats.beats(d, parts=len(parts)) for d in parts.values()]),
                             "; ".join(f"Wq,Wv − W{t}: {_dtext(d)}" for t, d in parts.items()) + ".",
                             src, None, None, SCALE_REASON))
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table5_more_types_lower_rank]
GATED = (table5_more_types_lower_rank,)
