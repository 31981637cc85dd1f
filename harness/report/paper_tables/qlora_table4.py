"""QLoRA Table 4: MMLU after instruction tuning, per data type.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`qlora_table4`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: qlora_table4).
"""

from __future__ import annotations

import math

import pandas as pd

from harness.report import stats
from harness.report.examples import runs_bootstrap
from harness.report.claims import Claim, DELTA, _dtext, _fmt, REASONS, SCALE_REASON
from harness.report.tables import cost_cells, COST_HEADER, DASH, find, md_table, num, TASK_LABELS

TABLE = "qlora_table4"


def _runs(r, key: str) -> list[tuple[dict, str]]:
    """A row's runs (one per seed) with the MMLU answers they saved under `key` (mmlu_before / mmlu_after)."""
    return [({"_dir": d}, key) for d in (r.get("dirs") or {}).values()]


def _ci(d: stats.Diff | None, sign: bool = False) -> str:
    if d is None:
        return ""
    lo, hi = d.interval()
    return f" [{lo:+.1f}, {hi:+.1f}]" if sign else f" [{lo:.1f}, {hi:.1f}]"


def mirror(agg: pd.DataFrame, paper: dict) -> str:
    """MMLU before and after instruction tuning, per base data type; intervals over the questions (their sampling
    error: a run's answers are saved per question), the change paired by question."""
    cols = paper["columns"]
    header = ["Data type", "Ours: task, model", "MMLU before", "MMLU after [95% CI over questions]",
              "Change [95% CI, paired by question]", "Held-out perplexity",
              f"Paper: {cols['llama7b_alpaca']}", f"Paper: {cols['mean']}", *COST_HEADER]
    rows = []
    for (task, model), g in agg.groupby(["task", "model"], sort=False):
        for prow in paper["rows"]:
            r = find(g, method=prow["method"])
            if r is None:
                continue
            after = num(r.get("mmlu_after"))
            if after != DASH:
                after += _ci(runs_bootstrap(_runs(r, "mmlu_after"), [], "mmlu_accuracy"))
            if r.get("seeds", 1) > 1 and after != DASH:
                after += f" ±{r['mmlu_after_spread']:.1f} over seeds"
            before, aft = r.get("mmlu_before"), r.get("mmlu_after")
            change = f"{aft - before:+.1f}" if before is not None and aft is not None and not (
                math.isnan(before) or math.isnan(aft)) else DASH
            if change != DASH:
                change += _ci(runs_bootstrap(_runs(r, "mmlu_after"), _runs(r, "mmlu_before"), "mmlu_accuracy"),
                              sign=True)
            v = prow.get("values", {})
            rows.append([prow["label"], f"{TASK_LABELS.get(task, task)}, {model}", num(before), after, change,
                         num(r["value"], 2) if r.get("metric") == "perplexity" else DASH,
                         num(v.get("llama7b_alpaca")), num(v.get("mean")), *cost_cells(r)])
    return md_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))


def table4_mmlu(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "QLoRA Table 4, section 4"
    for (task, model), g in agg.groupby(["task", "model"]):
        def row(m):
            r = find(g, method=m)
            if r is None or not r.get("mmlu_values"):
                return None
            return {"values": r["mmlu_values"], "value": float(r["mmlu_after"]), "runs": _runs(r, "mmlu_after")}

        def by_question(a, b):  # one seed each: a paired bootstrap over the questions both runs answered
            return lambda: runs_bootstrap(a["runs"], b["runs"], "mmlu_accuracy")

        bf, nf, fp = row("lora_bf16"), row("qlora_nf4_dq"), row("qlora_fp4")
        if bf and nf:
            d = stats.compare(nf["values"], bf["values"], by_question(nf, bf))
            out.append(Claim("qlora_table4", f"{task}/{model}: MMLU after tuning on an NF4+DQ base matches a BF16 base "
                             f"(equivalence within {DELTA:g} point)", stats.equivalent(d, DELTA),
                             f"BF16 {_fmt(bf['value'])}, NF4+DQ {_fmt(nf['value'])}; NF4+DQ − BF16 {_dtext(d)}.",
                             src, DELTA, d, REASONS["qlora_table3"]))
        if bf and fp:
            d = stats.compare(bf["values"], fp["values"], by_question(bf, fp))
            out.append(Claim("qlora_table4", f"{task}/{model}: FP4 trails BF16", stats.beats(d),
                             f"BF16 {_fmt(bf['value'])}, FP4 {_fmt(fp['value'])}; BF16 − FP4 {_dtext(d)}.",
                             src, None, d, SCALE_REASON))
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table4_mmlu]
GATED = (table4_mmlu,)
