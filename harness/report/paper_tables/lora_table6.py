"""LoRA Table 6: the effect of the rank r.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`lora_table6`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: lora_table6).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.report import stats
from harness.report.claims import _adapters, Claim, combo, DELTA, diff, _dtext, _fmt, SCALE_REASON
from harness.report.tables import beside, find, md_table, metric_name, num, PAPER_TASK, targets_label, TASK_LABELS

TABLE = "lora_table6"
# why a placement can fall behind at the largest ranks here: the local grids keep one learning rate for every rank
RANK_LR_REASON = ("; and one learning rate, tuned at one rank, serves every rank of these grids (alpha/r fixed), so "
                  "at the largest ranks the update on more matrices may overshoot within the few steps")


def mirror(agg: pd.DataFrame, paper: dict) -> str:
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


def table6_low_rank_suffices(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "LoRA Table 6, section 7.2"
    for (task, model), g in _adapters(agg).groupby(["task", "model"]):
        def by_rank(t):
            rows = {int(r): find(g, targets=t, r=int(r)) for r in g.loc[g["targets"] == t, "r"].dropna()}
            return {r: x for r, x in rows.items() if x is not None and not math.isnan(x["value"])}

        qv, q = by_rank("qv"), by_rank("q")
        if 1 in qv and len(qv) > 1:
            # against every other rank, not the best one picked on these same runs (which would favour it)
            others = sorted(r for r in qv if r != 1)
            ds = {r: diff(qv[1], qv[r]) for r in others}
            out.append(Claim("lora_table6", f"{task}/{model}: with Wq,Wv adapted, r=1 matches every other rank "
                             f"(within {DELTA:g} point, or better)",
                             stats.all_of([stats.noninferior(ds[r], DELTA, parts=len(others)) for r in others]),
                             f"r=1 {_fmt(qv[1]['value'])}; "
                             + "; ".join(f"r=1 − r={r} ({_fmt(qv[r]['value'])}): {_dtext(ds[r])}" for r in others)
                             + (f" (each part fails only at the Bonferroni level, 5%/{len(others)})"
                                if len(others) > 1 else "") + ".",
                             src, DELTA, None, SCALE_REASON))
        shared = sorted(r for r in set(q) & set(qv) if r != 1)
        if 1 in q and 1 in qv and shared:
            # each placement's gap from r=1 to its other ranks, averaged over the ranks both ran (no rank picked)
            k = len(shared)
            vals = combo(*[(1 / k, q[r]) for r in shared], (-1, q[1]), *[(-1 / k, qv[r]) for r in shared], (1, qv[1]))
            d = stats.mean_t(vals)
            gq = sum(q[r]["value"] for r in shared) / k - q[1]["value"]
            gqv = sum(qv[r]["value"] for r in shared) / k - qv[1]["value"]
            out.append(Claim("lora_table6", f"{task}/{model}: Wq alone needs a larger r than Wq,Wv (its r=1 falls "
                             "further behind its other ranks)", stats.beats(d),
                             f"mean of r={','.join(map(str, shared))} − r=1: Wq {gq:+.1f}, Wq,Wv {gqv:+.1f}; "
                             f"difference of the gaps: {_dtext(d)}.", src, None, d, SCALE_REASON))
        ranks = sorted(set(q) & set(qv))
        if ranks:
            ds = {r: diff(qv[r], q[r]) for r in ranks}
            out.append(Claim("lora_table6", f"{task}/{model}: adapting Wq,Wv beats Wq alone at every rank",
                             stats.all_of([stats.beats(ds[r], parts=len(ranks)) for r in ranks]),
                             "Wq,Wv − Wq: " + "; ".join(f"r={r} {_dtext(ds[r])}" for r in ranks) + ".",
                             src, None, None, SCALE_REASON + RANK_LR_REASON))
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table6_low_rank_suffices]
GATED = (table6_low_rank_suffices,)
