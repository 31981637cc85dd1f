"""QLoRA Table 4: MMLU after instruction tuning, per data type.

This table in one place: `mirror` lays out our runs beside the paper's values (paper_values.yaml, under
`qlora_table4`), its claims are checked by the functions in `CHECKS` (harness/report/claims.py decides them with
harness/report/stats.py), and its experiment is conf/experiment/ (report.table: qlora_table4).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from harness.report import stats
from harness.report.examples import load, runs_bootstrap, scorer
from harness.report.claims import Claim, DELTA, _dtext, _fmt, REASONS, SCALE_REASON
from harness.report.tables import cost_cells, COST_HEADER, DASH, find, md_table, num, TASK_LABELS

TABLE = "qlora_table4"


def _runs(r, key: str) -> list[tuple[dict, str]]:
    """A row's runs (one per seed), each with the predictions file it saved under `key`: its MMLU answers
    (mmlu_before / mmlu_after) or an evaluation split's (validation: each answer's loss)."""
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
    table = md_table(header, rows, ["l", "l"] + ["r"] * (len(header) - 2))
    line = chance_line(agg)
    return f"{table}\n\n{line}" if line else table


def chance(agg: pd.DataFrame) -> dict | None:
    """What answering at chance scores on the questions the runs answered (their saved gold letters), scored as the
    runs are (the mean over subjects, x100): {"n", "letters", "uniform", "letter", "best"}: uniform guessing, and
    always giving the most frequent correct letter (`letter`, scoring `best`). None without saved answers."""
    p = next((x for r in agg.to_dict("records") for d in (r.get("dirs") or {}).values()
              for x in [load({"_dir": d}, "mmlu_after") or load({"_dir": d}, "mmlu")] if x and "subject" in x), None)
    if p is None:
        return None
    gold = p["gold"].astype(str)
    letters = sorted(set(gold))
    every = np.arange(len(gold))
    acc = {c: 100 * scorer("mmlu_accuracy", {**p, "pred": np.full(len(gold), c, dtype=object)})(every)
           for c in letters}
    best = max(letters, key=lambda c: acc[c])
    return {"n": len(gold), "letters": len(letters), "uniform": 100 / len(letters), "letter": best, "best": acc[best]}


def chance_line(agg: pd.DataFrame) -> str:
    c = chance(agg)
    if c is None:
        return ""
    return (f"Chance on these {c['n']} questions ({c['letters']} answer letters, scored as the runs are: the mean "
            f"over subjects): uniform guessing {c['uniform']:.1f}; always answering \"{c['letter']}\", the most "
            f"frequent correct letter, {c['best']:.1f}. An MMLU value whose interval reaches these is not evidence "
            "that the model knows the answers, and a claim on it is not resolved.")


def table4_mmlu(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "QLoRA Table 4, section 4"
    for (task, model), g in agg.groupby(["task", "model"]):
        def row(m):
            r = find(g, method=m)
            if r is None or not r.get("mmlu_values"):
                return None
            return {"values": r["mmlu_values"], "value": float(r["mmlu_after"]), "runs": _runs(r, "mmlu_after")}

        def compare(a, b):
            """A - B: paired over seeds, and by a paired bootstrap over the questions (the seeds' answers averaged
            on each resample); the wider interval decides (stats.wider)."""
            return stats.wider(stats.compare(a["values"], b["values"]),
                               runs_bootstrap(a["runs"], b["runs"], "mmlu_accuracy"))

        def at_chance(*rows_) -> str:
            """Why these rows are not evidence: an MMLU after whose interval over the questions reaches chance."""
            if c is None:
                return ""
            low = []
            for label, x in rows_:
                d = runs_bootstrap(x["runs"], [], "mmlu_accuracy")
                lo, hi = d.interval() if d is not None else (None, None)
                if d is None or lo <= c["best"]:
                    low.append(f"{label} {_fmt(x['value'])}" + (f" [{lo:.1f}, {hi:.1f}]" if d is not None else ""))
            return (f" Not evidence: MMLU after of {', '.join(low)} reaches chance ({c['best']:.1f}, always "
                    f"\"{c['letter']}\"; uniform {c['uniform']:.1f}).") if low else ""

        def verdict(v: str, why: str) -> str:
            return stats.UNRESOLVED if why else v

        c = chance(g)
        bf, nf, fp = row("lora_bf16"), row("qlora_nf4_dq"), row("qlora_fp4")
        if bf and nf:
            d = compare(nf, bf)
            why = at_chance(("BF16", bf), ("NF4+DQ", nf))
            out.append(Claim("qlora_table4", f"{task}/{model}: MMLU after tuning on an NF4+DQ base matches a BF16 base "
                             f"(equivalence within {DELTA:g} point)", verdict(stats.equivalent(d, DELTA), why),
                             f"BF16 {_fmt(bf['value'])}, NF4+DQ {_fmt(nf['value'])}; NF4+DQ − BF16 {_dtext(d)}.{why}",
                             src, DELTA, d, REASONS["qlora_table3"]))
        if bf and fp:
            d = compare(bf, fp)
            why = at_chance(("BF16", bf), ("FP4", fp))
            out.append(Claim("qlora_table4", f"{task}/{model}: FP4 trails BF16", verdict(stats.beats(d), why),
                             f"BF16 {_fmt(bf['value'])}, FP4 {_fmt(fp['value'])}; BF16 − FP4 {_dtext(d)}.{why}",
                             src, None, d, SCALE_REASON))
    return out


def table4_perplexity(agg: pd.DataFrame) -> list[Claim]:
    """The data-type orderings of Table 4 on the held-out answers' perplexity after tuning (the metric that moves
    where MMLU sits at chance): FP4 trails BF16, and NF4+DQ beats FP4 (QLoRA's NF4-over-FP4 result). Lower is
    better; each difference is paired over seeds and bootstrapped over the answers, the wider interval deciding."""
    out = []
    src = "QLoRA Table 4, section 4"
    for (task, model), g in agg.groupby(["task", "model"]):
        rows = {m: find(g, method=m) for m in ("lora_bf16", "qlora_fp4", "qlora_nf4_dq")}
        rows = {m: r for m, r in rows.items() if r is not None and r.get("metric") == "perplexity"}
        labels = {"lora_bf16": "BF16", "qlora_fp4": "FP4", "qlora_nf4_dq": "NF4+DQ"}

        def lower(a: str, b: str, claim: str) -> None:
            """Claim: a has the lower perplexity (d = b - a > 0)."""
            if a not in rows or b not in rows:
                return
            # paired over seeds, and bootstrapped over the held-out answers (seeds averaged): the wider decides
            d = stats.wider(stats.compare(rows[b].get("values") or {}, rows[a].get("values") or {}),
                            runs_bootstrap(_runs(rows[b], rows[b].get("split")), _runs(rows[a], rows[a].get("split")),
                                           "perplexity", scale=1.0))
            va, vb = float(rows[a]["value"]), float(rows[b]["value"])
            nums = f"{labels[a]} {va:.3f}, {labels[b]} {vb:.3f}"
            if d is None:
                ev, verdict = f"{nums}; noise unknown (one seed, no per-answer losses).", stats.UNRESOLVED
            else:
                lo, hi = d.interval()
                ev = f"{nums}; {labels[b]} − {labels[a]} {d.mean:+.3f} [{lo:+.3f}, {hi:+.3f}] (95% interval, {d.how})."
                verdict = stats.beats(d)
            out.append(Claim("qlora_table4", f"{task}/{model}: after tuning, {claim} (held-out perplexity)", verdict,
                             ev, src, None, d, SCALE_REASON))

        lower("lora_bf16", "qlora_fp4", "FP4 trails BF16")
        lower("qlora_nf4_dq", "qlora_fp4", "NF4+DQ beats FP4")
    return out


# the claims this table's report checks, in order; GATED: those about what fine-tuning reaches (they rest only on
# a task that make sanity shows learnable)
CHECKS = [table4_mmlu, table4_perplexity]
GATED = (table4_mmlu, table4_perplexity)
