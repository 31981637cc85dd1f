"""The papers' claims, checked against our aggregated runs. Each check returns a Claim, or None when the runs
needed for it are missing. Differences are in metric points (x100 scale); TOLERANCE is the "matches" margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

TOLERANCE = 1.0  # points


@dataclass
class Claim:
    table: str
    claim: str
    holds: bool
    evidence: str

    def markdown(self) -> str:
        verdict = "**yes**" if self.holds else "**no**"
        return f"- {self.claim} — holds here: {verdict}. {self.evidence}"


def _value(agg: pd.DataFrame, **eq) -> float | None:
    m = pd.Series(True, index=agg.index)
    for k, v in eq.items():
        m &= agg[k].astype(object).map(lambda x, v=v: x is not pd.NA and x is not None and x == v).astype(bool)
    sub = agg[m]
    if sub.empty or sub["value"].isna().all():
        return None
    return float(sub["value"].iloc[0])


def _noise(agg: pd.DataFrame) -> str:
    s = agg.loc[agg["seeds"] > 1, "spread"]
    if s.empty:
        return "One seed per configuration: no seed spread measured."
    return f"Seed standard deviation here: median {s.median():.1f}, max {s.max():.1f} points."


def _fmt(x: float) -> str:
    return f"{x:.1f}"


# ------------------------------------------------------------------------------------------------- Table 6
def table6_low_rank_suffices(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for (task, model), g in agg[agg["method"].isin(["lora"]) | agg["method"].str.startswith("qlora")].groupby(
            ["task", "model"]):
        qv = {int(r): _value(g, targets="qv", r=int(r)) for r in g.loc[g["targets"] == "qv", "r"].dropna()}
        qv = {r: v for r, v in qv.items() if v is not None}
        if 1 in qv and len(qv) > 1:
            best_r = max(qv, key=qv.get)
            gap = qv[best_r] - qv[1]
            out.append(Claim("lora_table6", f"{task}/{model}: with Wq,Wv adapted, r=1 is within {TOLERANCE:.0f} point of "
                             "the best rank", gap <= TOLERANCE,
                             f"r=1: {_fmt(qv[1])}, best r={best_r}: {_fmt(qv[best_r])} (gap {_fmt(gap)} points). "
                             + _noise(g)))
        q = {int(r): _value(g, targets="q", r=int(r)) for r in g.loc[g["targets"] == "q", "r"].dropna()}
        q = {r: v for r, v in q.items() if v is not None}
        if 1 in q and len(q) > 1 and 1 in qv:
            best_q = max(q, key=q.get)
            gap_q = q[best_q] - q[1]
            gap_qv = max(qv.values()) - qv[1]
            out.append(Claim("lora_table6", f"{task}/{model}: Wq alone needs a larger r than Wq,Wv (its r=1 falls "
                             "further behind its best rank)", best_q > 1 and gap_q > gap_qv,
                             f"Wq: r=1 {_fmt(q[1])}, best r={best_q} {_fmt(q[best_q])} (gap {_fmt(gap_q)}); "
                             f"Wq,Wv gap {_fmt(gap_qv)}."))
        ranks = sorted(set(q) & set(qv))
        if ranks:
            wins = [r for r in ranks if qv[r] >= q[r]]
            out.append(Claim("lora_table6", f"{task}/{model}: adapting Wq,Wv beats Wq alone at every rank",
                             len(wins) == len(ranks),
                             f"Wq,Wv >= Wq at r in {wins} of {ranks}; mean advantage "
                             f"{_fmt(sum(qv[r] - q[r] for r in ranks) / len(ranks))} points."))
    return out


# ------------------------------------------------------------------------------------------------- Table 5
def table5_more_types_lower_rank(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for (task, model), g in agg[agg["method"] == "lora"].groupby(["task", "model"]):
        v = {t: _value(g, targets=t) for t in ("q", "k", "v", "o", "qk", "qv", "qkvo")}
        v = {t: x for t, x in v.items() if x is not None}
        single = {t: v[t] for t in "qkvo" if t in v}
        multi = {t: v[t] for t in ("qv", "qkvo") if t in v}
        if single and multi:
            bm, bs = max(multi, key=multi.get), max(single, key=single.get)
            out.append(Claim("lora_table5", f"{task}/{model}: at a fixed budget, Wq,Wv or all four at lower rank beat "
                             "any single type at higher rank", multi[bm] > single[bs],
                             f"best multi-type W{','.join(bm)}: {_fmt(multi[bm])}; best single W{bs}: "
                             f"{_fmt(single[bs])}. " + _noise(g)))
        if all(t in v for t in "qkvo"):
            weakest = min("qkvo", key=lambda t: v[t])
            out.append(Claim("lora_table5", f"{task}/{model}: Wq or Wk alone is the weakest single choice",
                             weakest in "qk", "single types: " + ", ".join(f"W{t} {_fmt(v[t])}" for t in "qkvo")))
    return out


# ------------------------------------------------------------------------------------------------- Table 2
def table2_lora_matches_full(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for model, g in agg.groupby("model"):
        diffs, trainable = [], None
        for task, gt in g.groupby("task"):
            full = _value(gt[gt["method"] == "full"])
            lora = gt[(gt["method"] == "lora") & (gt["targets"] == "qv")] if "qv" in set(gt["targets"]) else \
                gt[gt["method"] == "lora"]
            lv = _value(lora)
            if full is not None and lv is not None:
                diffs.append((task, lv - full))
                trainable = float(lora["trainable_pct"].iloc[0])
        if diffs:
            mean = sum(d for _, d in diffs) / len(diffs)
            out.append(Claim("lora_table2", f"{model}: LoRA matches full fine-tuning (mean over tasks within "
                             f"{TOLERANCE:.0f} point or better) while training {trainable:.2f}% of the parameters",
                             mean >= -TOLERANCE,
                             "LoRA − full per task: " + ", ".join(f"{t} {d:+.1f}" for t, d in diffs)
                             + f"; mean {mean:+.1f} points. " + _noise(g)))
    return out


# ------------------------------------------------------------------------------------------------- QLoRA Table 3
def table3_quantized_match(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        refs = {m: _value(g[g["method"] == m]) for m in ("lora", "full")}
        quant = sorted(m for m in set(g["method"]) if str(m).startswith("qlora"))
        if refs["lora"] is None or not quant:
            continue
        rows, ok = [], True
        for m in quant:
            sub = g[g["method"] == m]
            for (t, r), gg in sub.groupby(["targets", "r"]):
                lv = _value(g, method="lora", targets=t, r=r)
                qv = _value(gg)
                if lv is None or qv is None:
                    continue
                d = qv - lv
                ok &= abs(d) <= TOLERANCE
                rows.append(f"{m} {t} r={r} {d:+.1f}")
        if rows:
            out.append(Claim("qlora_table3", f"{task}/{model}: every QLoRA variant matches 16-bit-compute LoRA within "
                             f"{TOLERANCE:.0f} point", ok, "QLoRA − LoRA: " + "; ".join(rows) + ". " + _noise(g)))
        if refs["full"] is not None:
            qmean = [_value(g[g["method"] == m]) for m in quant]
            qmean = [x for x in qmean if x is not None]
            worst = min(qmean)
            out.append(Claim("qlora_table3", f"{task}/{model}: every QLoRA variant matches full fine-tuning within "
                             f"{TOLERANCE:.0f} point", worst >= refs["full"] - TOLERANCE,
                             f"full {_fmt(refs['full'])}, weakest QLoRA {_fmt(worst)}."))
        lmem = g.loc[g["method"] == "lora", "peak_mb"].astype(float).mean()
        qmem = {m: g.loc[g["method"] == m, "peak_mb"].astype(float).mean() for m in quant}
        four = {m: v for m, v in qmem.items() if "int8" not in m}
        if four and not math.isnan(lmem):
            out.append(Claim("qlora_table3", f"{task}/{model}: a 4-bit base needs less training memory than LoRA on "
                             "an fp32 base (QLoRA's premise)", all(v < lmem for v in four.values()),
                             f"peak over baseline: LoRA {lmem:.0f} MB; " + ", ".join(f"{m} {v:.0f} MB" for m, v in
                                                                                     four.items()) + "."))
    return out


CHECKS = {
    "lora_table2": [table2_lora_matches_full],
    "lora_table5": [table5_more_types_lower_rank],
    "lora_table6": [table6_low_rank_suffices],
    "qlora_table3": [table3_quantized_match],
    None: [table6_low_rank_suffices, table3_quantized_match],  # a generic grid: whichever claims it can test
}


def check(table: str | None, agg: pd.DataFrame) -> list[Claim]:
    if agg.empty:
        return []
    return [c for fn in CHECKS.get(table, CHECKS[None]) for c in fn(agg)]
