"""The papers' claims, checked against our aggregated runs. Differences are in metric points (x100 scale).

A verdict is yes, no, or not resolved: "matches" means within TOLERANCE points; when a claim fails by less than
the seed noise (2 standard errors of the difference, from the seed spread) it is "not resolved" rather than "no",
and a "beats" claim needs a margin beyond that noise to count as yes. With one seed the noise is unknown and the
raw numbers decide (the evidence says so).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report.tables import find, targets_label

TOLERANCE = 1.0  # points


@dataclass
class Claim:
    table: str
    claim: str
    holds: bool | None  # None: not resolved at our noise level
    evidence: str

    def markdown(self) -> str:
        verdict = {True: "**yes**", False: "**no**",
                   None: "**not resolved** (within seed noise, or one seed: noise unknown)"}[self.holds]
        return f"- {self.claim} — holds here: {verdict}. {self.evidence}"


@dataclass
class Est:
    """An aggregated metric and its standard error over seeds (None with one seed)."""
    value: float
    se: float | None


def _est(agg: pd.DataFrame, **eq) -> Est | None:
    row = find(agg, **eq)
    if row is None or pd.isna(row["value"]):
        return None
    n = int(row["seeds"])
    return Est(float(row["value"]), float(row["spread"]) / math.sqrt(n) if n > 1 else None)


def noise(*ests: Est) -> float | None:
    """2 standard errors of a sum/difference of independent estimates (None if any has one seed)."""
    if any(e.se is None for e in ests):
        return None
    return 2 * math.sqrt(sum(e.se ** 2 for e in ests))


def _n(x: float | None) -> str:
    return "unknown (one seed)" if x is None else f"{x:.1f}"


def within(shortfall: float, nz: float | None, tol: float = TOLERANCE) -> bool | None:
    """'matches within tol' given how far short it falls (positive = worse). One seed (nz None): the seed noise is
    unknown, so neither a match nor a miss is resolved."""
    if nz is None:
        return None
    if shortfall <= tol:
        return True
    return None if shortfall <= max(tol, nz) else False


def beats(diff: float, nz: float | None) -> bool | None:
    """'A beats B' given A - B; not resolved with one seed (nz None) or inside the noise."""
    if nz is None:
        return None
    return True if diff > nz else False if diff < -nz else None


def _spread_note(agg: pd.DataFrame) -> str:
    s = agg.loc[agg["seeds"] > 1, "spread"]
    if s.empty:
        return "One seed per configuration: no seed spread measured."
    return f"Seed standard deviation here: median {s.median():.1f}, max {s.max():.1f} points."


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _all(verdicts: list[bool | None]) -> bool | None:
    return False if False in verdicts else None if None in verdicts else True


# ------------------------------------------------------------------------------------------------- Table 6
def table6_low_rank_suffices(agg: pd.DataFrame) -> list[Claim]:
    out = []
    adapters = agg[agg["method"].astype(str).str.contains("lora")]
    for (task, model), g in adapters.groupby(["task", "model"]):
        def by_rank(t):
            ests = {int(r): _est(g, targets=t, r=int(r)) for r in g.loc[g["targets"] == t, "r"].dropna()}
            return {r: e for r, e in ests.items() if e is not None}

        qv, q = by_rank("qv"), by_rank("q")
        if 1 in qv and len(qv) > 1:
            best = max(qv, key=lambda r: qv[r].value)
            gap = qv[best].value - qv[1].value
            nz = noise(qv[best], qv[1]) if best != 1 else None
            out.append(Claim("lora_table6", f"{task}/{model}: with Wq,Wv adapted, r=1 is within {TOLERANCE:.0f} point of "
                             "the best rank", within(gap, nz),
                             f"r=1: {_fmt(qv[1].value)}, best r={best}: {_fmt(qv[best].value)} (gap {_fmt(gap)} points; "
                             f"seed noise {_n(nz)}). " + _spread_note(g)))
        if 1 in q and len(q) > 1 and 1 in qv and len(qv) > 1:
            bq = max(q, key=lambda r: q[r].value)
            bqv = max(qv, key=lambda r: qv[r].value)
            gap_q, gap_qv = q[bq].value - q[1].value, qv[bqv].value - qv[1].value
            nz = noise(q[bq], q[1], qv[bqv], qv[1])
            out.append(Claim("lora_table6", f"{task}/{model}: Wq alone needs a larger r than Wq,Wv (its r=1 falls "
                             "further behind its best rank)", beats(gap_q - gap_qv, nz) if bq > 1 else False,
                             f"Wq: r=1 {_fmt(q[1].value)}, best r={bq} {_fmt(q[bq].value)} (gap {_fmt(gap_q)}); "
                             f"Wq,Wv gap {_fmt(gap_qv)}; seed noise of the difference {_n(nz)}."))
        ranks = sorted(set(q) & set(qv))
        if ranks:
            verdicts = [beats(qv[r].value - q[r].value, noise(qv[r], q[r])) for r in ranks]
            out.append(Claim("lora_table6", f"{task}/{model}: adapting Wq,Wv beats Wq alone at every rank",
                             _all(verdicts),
                             "Wq,Wv − Wq: " + ", ".join(f"r={r} {qv[r].value - q[r].value:+.1f}" for r in ranks)
                             + f" (seed noise up to {_n(max((noise(qv[r], q[r]) or 0) for r in ranks) or None)})."))
    return out


# ------------------------------------------------------------------------------------------------- Table 5
def table5_more_types_lower_rank(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for (task, model), g in agg[agg["method"] == "lora"].groupby(["task", "model"]):
        v = {t: _est(g, targets=t) for t in ("q", "k", "v", "o", "qk", "qv", "qkvo")}
        v = {t: x for t, x in v.items() if x is not None}
        single = {t: v[t] for t in "qkvo" if t in v}
        multi = {t: v[t] for t in ("qv", "qkvo") if t in v}
        if single and multi:
            bm = max(multi, key=lambda t: multi[t].value)
            bs = max(single, key=lambda t: single[t].value)
            nz = noise(multi[bm], single[bs])
            out.append(Claim("lora_table5", f"{task}/{model}: at a fixed budget, Wq,Wv or all four at lower rank beat "
                             "any single type at higher rank", beats(multi[bm].value - single[bs].value, nz),
                             f"best multi-type {targets_label(bm)}: {_fmt(multi[bm].value)}; best single {targets_label(bs)}: "
                             f"{_fmt(single[bs].value)}; seed noise {_n(nz)}. " + _spread_note(g)))
        if all(t in v for t in "qkvo"):
            weakest = min("qkvo", key=lambda t: v[t].value)
            others = [t for t in ("vo" if weakest in "qk" else "qk")]
            runner = min(others, key=lambda t: v[t].value)
            nz = noise(v[weakest], v[runner])
            verdict = beats(v[runner].value - v[weakest].value, nz)
            out.append(Claim("lora_table5", f"{task}/{model}: Wq or Wk alone is the weakest single choice",
                             verdict if weakest in "qk" else (None if verdict is None else False),
                             "single types: " + ", ".join(f"W{t} {_fmt(v[t].value)}" for t in "qkvo")
                             + f"; seed noise {_n(nz)}."))
    return out


# ------------------------------------------------------------------------------------------------- Table 2
def table2_lora_matches_full(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for model, g in agg.groupby("model"):
        diffs, ests, trainable = [], [], None
        for task, gt in g.groupby("task"):
            full = _est(gt, method="full")
            lora = _est(gt, method="lora", targets="qv") or _est(gt, method="lora")
            if full is not None and lora is not None:
                diffs.append((task, lora.value - full.value))
                ests += [full, lora]
                trainable = float(gt.loc[gt["method"] == "lora", "trainable_pct"].iloc[0])
        if diffs:
            mean = sum(d for _, d in diffs) / len(diffs)
            nz = noise(*ests)
            nz = None if nz is None else nz / len(diffs)
            out.append(Claim("lora_table2", f"{model}: LoRA matches full fine-tuning (mean over tasks within "
                             f"{TOLERANCE:.0f} point or better) while training {trainable:.2f}% of the parameters",
                             within(-mean, nz),
                             "LoRA − full per task: " + ", ".join(f"{t} {d:+.1f}" for t, d in diffs)
                             + f"; mean {mean:+.1f} points (seed noise {_n(nz)}). " + _spread_note(g)))
    return out


# ------------------------------------------------------------------------------------------------- QLoRA Table 3
def table3_quantized_match(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        lora_rows = g[g["method"] == "lora"]
        quant = sorted(m for m in set(g["method"]) if str(m).startswith("qlora"))
        if lora_rows.empty or not quant:
            continue
        rows, verdicts = [], []
        for m in quant:
            for (t, r), _ in g[g["method"] == m].groupby(["targets", "r"]):
                lv, qv = _est(g, method="lora", targets=t, r=r), _est(g, method=m, targets=t, r=r)
                if lv is None or qv is None:
                    continue
                d = qv.value - lv.value
                verdicts.append(within(abs(d), noise(qv, lv)))
                rows.append(f"{m} {t} r={r} {d:+.1f}")
        if rows:
            out.append(Claim("qlora_table3", f"{task}/{model}: every QLoRA variant matches 16-bit-compute LoRA within "
                             f"{TOLERANCE:.0f} point", _all(verdicts), "QLoRA − LoRA: " + "; ".join(rows) + ". "
                             + _spread_note(g)))
        full = _est(g, method="full")
        if full is not None:
            qs = {m: _est(g, method=m) for m in quant}
            qs = {m: e for m, e in qs.items() if e is not None}
            worst = min(qs, key=lambda m: qs[m].value)
            nz = noise(full, qs[worst])
            out.append(Claim("qlora_table3", f"{task}/{model}: every QLoRA variant matches full fine-tuning (within "
                             f"{TOLERANCE:.0f} point or better)", within(full.value - qs[worst].value, nz),
                             f"full {_fmt(full.value)}, weakest QLoRA ({worst}) {_fmt(qs[worst].value)}; seed noise "
                             f"{_n(nz)}."))
        lmem = g.loc[g["method"] == "lora", "peak_mb"].astype(float).mean()
        qmem = {m: g.loc[g["method"] == m, "peak_mb"].astype(float).mean() for m in quant}
        four = {m: v for m, v in qmem.items() if "int8" not in m}
        if four and not math.isnan(lmem):
            out.append(Claim("qlora_table3", f"{task}/{model}: a 4-bit base needs less training memory than LoRA on "
                             "an fp32 base (QLoRA's premise)", all(v < lmem for v in four.values()),
                             f"peak over baseline: LoRA {lmem:.0f} MB; " + ", ".join(f"{m} {v:.0f} MB" for m, v in
                                                                                     four.items()) + "."))
    return out


# ------------------------------------------------------------------------------------------------- QLoRA Table 2
def table2_data_types(agg: pd.DataFrame) -> list[Claim]:
    """Evaluation only (no seeds): the numbers decide. Perplexity: lower is better."""
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        ppl = {m: _est(g, method=m) for m in ("full", "qlora_fp4", "qlora_fp4_dq", "qlora_nf4", "qlora_nf4_dq")}
        if ppl["qlora_nf4"] and ppl["qlora_fp4"]:
            nf, fp = ppl["qlora_nf4"].value, ppl["qlora_fp4"].value
            out.append(Claim("qlora_table2", f"{task}/{model}: NF4 has lower perplexity than FP4 (the paper: NF4+DQ "
                             "27.41 vs Float4 E2M1 31.07)", nf < fp, f"NF4 {nf:.3f}, FP4 {fp:.3f} ({nf - fp:+.3f})."))
        if ppl["qlora_nf4_dq"] and ppl["qlora_fp4_dq"]:
            nf, fp = ppl["qlora_nf4_dq"].value, ppl["qlora_fp4_dq"].value
            out.append(Claim("qlora_table2", f"{task}/{model}: with double quantization too, NF4 beats FP4",
                             nf < fp, f"NF4+DQ {nf:.3f}, FP4+DQ {fp:.3f} ({nf - fp:+.3f})."))
        bits = {m: find(g, method=m) for m in ("qlora_nf4", "qlora_nf4_dq", "qlora_fp4", "qlora_fp4_dq")}
        pairs = [(a, b) for a, b in (("qlora_nf4", "qlora_nf4_dq"), ("qlora_fp4", "qlora_fp4_dq"))
                 if bits[a] is not None and bits[b] is not None and bits[a].get("bits_per_param")]
        if pairs:
            # the paper counts packed weights and per-block constants; older records hold only the total, which
            # also counts bitsandbytes' per-tensor code book (1 KiB per layer)
            key = "bits_per_param_blocks" if all(pd.notna(bits[b].get("bits_per_param_blocks")) for _, b in pairs) \
                else "bits_per_param"
            saved = [bits[a][key] - bits[b][key] for a, b in pairs]
            note = ("packed weights and block constants, as the paper counts" if key == "bits_per_param_blocks" else
                    "all bytes held, including the per-tensor code book of each double-quantized layer, which the "
                    "paper's count leaves out")
            out.append(Claim("qlora_table2", f"{task}/{model}: double quantization saves 0.373 bits per parameter "
                             "(within 0.01)", all(abs(x - 0.373) <= 0.01 for x in saved),
                             f"measured on the quantized linear layers ({note}): " + ", ".join(
                                 f"{a} {bits[a][key]:.3f} -> {b} {bits[b][key]:.3f} "
                                 f"({x:.3f} saved)" for (a, b), x in zip(pairs, saved)) + "."))
        if ppl["full"] and ppl["qlora_nf4_dq"]:
            d = ppl["qlora_nf4_dq"].value - ppl["full"].value
            out.append(Claim("qlora_table2", f"{task}/{model}: NF4+DQ costs less than 10% perplexity over the fp32 "
                             "base (not a paper claim: a sanity bound for a 4-bit type)",
                             d < 0.1 * ppl["full"].value, f"fp32 {ppl['full'].value:.3f}, NF4+DQ "
                             f"{ppl['qlora_nf4_dq'].value:.3f} ({100 * d / ppl['full'].value:+.1f}%)."))
    return out


# ------------------------------------------------------------------------------------------------- QLoRA Table 4
def table4_mmlu(agg: pd.DataFrame) -> list[Claim]:
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        def est(m):
            r = find(g, method=m)
            if r is None or r.get("mmlu_after") is None or pd.isna(r.get("mmlu_after")):
                return None
            n = int(r["seeds"])
            return Est(float(r["mmlu_after"]), float(r["mmlu_after_spread"]) / math.sqrt(n) if n > 1 else None)

        bf, nf, fp = est("lora_bf16"), est("qlora_nf4_dq"), est("qlora_fp4")
        if bf and nf:
            nz = noise(bf, nf)
            out.append(Claim("qlora_table4", f"{task}/{model}: MMLU after tuning on an NF4+DQ base matches a BF16 base "
                             f"(within {TOLERANCE:.0f} point)", within(abs(nf.value - bf.value), nz),
                             f"BF16 {_fmt(bf.value)}, NF4+DQ {_fmt(nf.value)}; seed noise {_n(nz)}."))
        if bf and fp:
            nz = noise(bf, fp)
            out.append(Claim("qlora_table4", f"{task}/{model}: FP4 trails BF16", beats(bf.value - fp.value, nz),
                             f"BF16 {_fmt(bf.value)}, FP4 {_fmt(fp.value)} ({fp.value - bf.value:+.1f}); seed noise "
                             f"{_n(nz)}."))
    return out


CHECKS = {
    "lora_table2": [table2_lora_matches_full],
    "lora_table5": [table5_more_types_lower_rank],
    "lora_table6": [table6_low_rank_suffices],
    "qlora_table3": [table3_quantized_match],
    "qlora_table2": [table2_data_types],
    "qlora_table4": [table4_mmlu],
    "sanity": [],  # fine-tuning vs its baselines (harness/report/sanity.py), no paper claim
    None: [table6_low_rank_suffices, table3_quantized_match],  # a generic grid: whichever claims it can test
}


def check(table: str | None, agg: pd.DataFrame) -> list[Claim]:
    if agg.empty:
        return []
    return [c for fn in CHECKS.get(table, CHECKS[None]) for c in fn(agg)]
