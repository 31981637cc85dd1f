"""The papers' claims, checked against our aggregated runs. Differences are in metric points (x100 scale).

Each claim is one statement of a paper with its source (table, figure or section), decided by harness.report.stats:
"holds", "fails" or "not resolved", printed with the numbers that decided it (the difference, its interval, n and
how it was computed). Comparisons are paired by seed (seed s draws the same training subset and head init in every
configuration); with one seed, a paired bootstrap over evaluation examples where both runs saved predictions; else
the noise is unknown and nothing is resolved. The margin of every "matches" (`DELTA`) is fixed here, before any
number is seen. A claim our runs contradict says so, with the likely reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from harness.report import stats
from harness.report.examples import paired_bootstrap
from harness.report.tables import find, targets_label

DELTA = 1.0  # points on the x100 scale: "matches" = within this (equivalence / non-inferiority margin)
TOLERANCE = DELTA  # recommendations: configurations within this of the best
SANITY_BOUND = "sanity bound"  # the source of a check of ours that no paper states

# one sentence each: why a claim made at the papers' scale can fail at ours
SCALE_REASON = ("likely reason: our scale (a 22M-parameter MiniLM or a 135M SmolLM2, at most a few thousand "
                "training examples, 100 optimizer steps or fewer) is orders of magnitude below the paper's, where "
                "the effect was measured")
REASONS = {
    "lora_table2": "likely reason: full fine-tuning of a small model at its own tuned learning rate is a strong "
                   "baseline on a few thousand examples; the paper's LoRA advantage was measured on full GLUE "
                   "training sets with RoBERTa/DeBERTa",
    "memory": "likely reason: at this model size activations, the tokenizer's batch and framework buffers dominate "
              "the peak, not the weights, gradients and optimizer state that LoRA and 4-bit storage save",
    "qlora_table2": "likely reason: another measure on other models: the paper averages the perplexity of 125M-13B "
                    "language models on Pile Common Crawl, here one small model on one held-out set (SmolLM2's "
                    "shipped weights are already dequantized Q4_1 values; MiniLM is a sentence encoder); the "
                    "types' per-layer reconstruction errors in the table are the direct comparison of the codes",
    "qlora_table3": "likely reason: a 4-bit code of a small model's weights loses more than at 7B-65B, where "
                    "the paper measured it, and our runs are short",
}


@dataclass
class Claim:
    table: str
    claim: str
    verdict: str  # stats.HOLDS / FAILS / UNRESOLVED
    evidence: str
    source: str = ""
    delta: float | None = None
    diff: stats.Diff | None = None
    reason: str | None = None  # why the paper's claim may fail at our scale (printed when it fails)

    @property
    def paper(self) -> bool:
        """A statement of a paper (its source names a table, figure or section), not a sanity bound of ours."""
        return bool(self.source) and self.source != SANITY_BOUND

    @property
    def holds(self) -> bool | None:
        return {stats.HOLDS: True, stats.FAILS: False}.get(self.verdict)

    def markdown(self) -> str:
        src = f" ({self.source})" if self.source else ""
        margin = f" Margin fixed in advance: {self.delta:g} point." if self.delta is not None else ""
        out = f"- {self.claim}{src} — **{self.verdict}** here. {self.evidence}{margin}"
        if self.verdict == stats.FAILS and self.reason:
            out += f" Our runs contradict the paper here; {self.reason}."
        return out

    def as_dict(self) -> dict:
        d = {"table": self.table, "source": self.source, "claim": self.claim, "verdict": self.verdict,
             "evidence": self.evidence, "delta": self.delta}
        if self.diff is not None:
            lo, hi = self.diff.interval()
            d.update({"difference": self.diff.mean, "interval_95": [lo, hi], "n": self.diff.n, "how": self.diff.how})
        return d


def _values(row: dict | None) -> dict[int, float]:
    return dict(row.get("values") or {}) if row else {}


def diff(a: dict | None, b: dict | None) -> stats.Diff | None:
    """A - B (rows of the aggregate): paired by seed, else Welch, else a per-example bootstrap of one run each."""
    if a is None or b is None:
        return None

    def examples():
        da, db = a.get("dirs") or {}, b.get("dirs") or {}
        if not da or not db or a.get("split") != b.get("split"):
            return None
        return paired_bootstrap({"_dir": next(iter(da.values()))}, {"_dir": next(iter(db.values()))},
                                a["split"], a["metric"], 100.0 if a.get("higher_better", True) else 1.0)

    return stats.compare(_values(a), _values(b), examples)


def combo(*terms: tuple[float, dict]) -> dict[int, float]:
    """Per-seed values of sum(coef * row) over the seeds every row has (e.g. a gap minus another gap)."""
    seeds = set.intersection(*(set(_values(r)) for _, r in terms)) if terms else set()
    return {s: sum(c * _values(r)[s] for c, r in terms) for s in sorted(seeds)}


def _fmt(x: float) -> str:
    return f"{x:.1f}"


def _dtext(d: stats.Diff | None) -> str:
    return d.text() if d is not None else "noise unknown (one seed, no per-example predictions)"


def _best(rows: dict, exclude=()) -> object | None:
    cand = {k: r for k, r in rows.items() if k not in exclude and r is not None}
    return max(cand, key=lambda k: cand[k]["value"]) if cand else None


def _adapters(agg: pd.DataFrame) -> pd.DataFrame:
    return agg[agg["method"].astype(str).isin(["lora", "lora_bf16"])]


# ------------------------------------------------------------------------------------------------- Table 6
def table6_low_rank_suffices(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "LoRA Table 6, section 7.2"
    for (task, model), g in _adapters(agg).groupby(["task", "model"]):
        def by_rank(t):
            rows = {int(r): find(g, targets=t, r=int(r)) for r in g.loc[g["targets"] == t, "r"].dropna()}
            return {r: x for r, x in rows.items() if x is not None and not math.isnan(x["value"])}

        qv, q = by_rank("qv"), by_rank("q")
        if 1 in qv and len(qv) > 1:
            best = _best(qv, exclude=(1,))
            d = diff(qv[1], qv[best])
            out.append(Claim("lora_table6", f"{task}/{model}: with Wq,Wv adapted, r=1 matches the best other rank "
                             f"(within {DELTA:g} point, or better)", stats.noninferior(d, DELTA),
                             f"r=1 {_fmt(qv[1]['value'])}, best other r={best} {_fmt(qv[best]['value'])}; "
                             f"r=1 − r={best}: {_dtext(d)}. The best rank is picked on these same runs, which "
                             "favours it.", src, DELTA, d, SCALE_REASON))
        if 1 in q and len(q) > 1 and 1 in qv and len(qv) > 1:
            bq, bqv = _best(q, exclude=(1,)), _best(qv, exclude=(1,))
            vals = combo((1, q[bq]), (-1, q[1]), (-1, qv[bqv]), (1, qv[1]))
            d = stats.mean_t(vals)
            out.append(Claim("lora_table6", f"{task}/{model}: Wq alone needs a larger r than Wq,Wv (its r=1 falls "
                             "further behind its best other rank)", stats.beats(d),
                             f"Wq: r={bq} − r=1 {q[bq]['value'] - q[1]['value']:+.1f}; Wq,Wv: r={bqv} − r=1 "
                             f"{qv[bqv]['value'] - qv[1]['value']:+.1f}; difference of the gaps: {_dtext(d)}.",
                             src, None, d, SCALE_REASON))
        ranks = sorted(set(q) & set(qv))
        if ranks:
            ds = {r: diff(qv[r], q[r]) for r in ranks}
            out.append(Claim("lora_table6", f"{task}/{model}: adapting Wq,Wv beats Wq alone at every rank",
                             stats.all_of([stats.beats(ds[r]) for r in ranks]),
                             "Wq,Wv − Wq: " + "; ".join(f"r={r} {_dtext(ds[r])}" for r in ranks) + ".",
                             src, None, None, SCALE_REASON))
    return out


# ------------------------------------------------------------------------------------------------- Table 5
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
                             "Wq,Wv", stats.all_of([stats.beats(d) for d in parts.values()]),
                             "; ".join(f"Wq,Wv − W{t}: {_dtext(d)}" for t, d in parts.items()) + ".",
                             src, None, None, SCALE_REASON))
    return out


# ------------------------------------------------------------------------------------------------- Table 2
def lora_reference(g: pd.DataFrame):
    """The LoRA configuration a claim compares with full fine-tuning: the papers' Wq,Wv where it ran, else any."""
    return find(g, method="lora", targets="qv") or find(g, method="lora")


def table2_lora_matches_full(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "LoRA Table 2, section 5.3"
    for model, g in agg.groupby("model"):
        parts, text, trainable = [], [], None
        for task, gt in g.groupby("task"):
            full = find(gt, method="full")
            lora = lora_reference(gt)
            if full is None or lora is None:
                continue
            d = diff(lora, full)
            parts.append(stats.noninferior(d, DELTA))
            text.append(f"{task}: LoRA {_fmt(lora['value'])} vs full {_fmt(full['value'])}, LoRA − full {_dtext(d)}")
            trainable = lora["trainable_pct"]
        if parts:
            label, where = (f"{text[0].split(':')[0]}/{model}", "") if len(parts) == 1 else (model, " on every task")
            out.append(Claim("lora_table2", f"{label}: LoRA matches or exceeds full fine-tuning{where} (within "
                             f"{DELTA:g} point, or better) while training {trainable:.2f}% of the parameters",
                             stats.all_of(parts), "; ".join(text) + ".", src, DELTA, None, REASONS["lora_table2"]))
    return out


def table3_e2e_lora_matches_full(agg: pd.DataFrame) -> list[Claim]:
    """LoRA Table 3 (E2E NLG): LoRA matches or exceeds full fine-tuning, on the headline metric (BLEU)."""
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        full, lora = find(g, method="full"), lora_reference(g)
        if full is None or lora is None:
            continue
        d = diff(lora, full)
        metric = str(lora.get("metric") or "")
        out.append(Claim("lora_table3", f"{task}/{model}: LoRA matches or exceeds full fine-tuning on {metric.upper()} "
                         f"(within {DELTA:g} point, or better) while training {lora['trainable_pct']:.2f}% of the "
                         "parameters", stats.noninferior(d, DELTA),
                         f"LoRA {_fmt(lora['value'])} vs full {_fmt(full['value'])}; LoRA − full {_dtext(d)}.",
                         "LoRA Table 3, section 5.4", DELTA, d, SCALE_REASON))
    return out


MEMORY_MARGIN = 0.02  # one seed each: a peak within 2% of the other's is allocator noise, not a difference


def needs_more_memory(big: dict, small: dict) -> tuple[str, stats.Diff | None]:
    """(verdict, difference) of "`big` needs more training memory than `small`": peaks paired over seeds where
    both ran several, else the two single peaks with the MEMORY_MARGIN band left unresolved."""
    d = stats.compare(big.get("peaks") or {}, small.get("peaks") or {})
    if d is not None:
        return stats.beats(d), d
    b, s = float(big["peak_mb"]), float(small["peak_mb"])
    return (stats.HOLDS if b > s * (1 + MEMORY_MARGIN) else stats.FAILS if b < s * (1 - MEMORY_MARGIN)
            else stats.UNRESOLVED), None


def memory_full_above_lora(agg: pd.DataFrame) -> list[Claim]:
    """LoRA section 4.2: training memory (VRAM) drops when only the adapters train; here the measured peak."""
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        full, lora = find(g, method="full"), lora_reference(g)
        if full is None or lora is None or pd.isna(full.get("peak_mb")) or pd.isna(lora.get("peak_mb")):
            continue
        verdict, d = needs_more_memory(full, lora)
        out.append(Claim("memory", f"{task}/{model}: full fine-tuning needs more training memory than LoRA",
                         verdict, f"peak over the process baseline: full {full['peak_mb']:.0f} MiB, LoRA "
                         f"({targets_label(lora['targets'])}, r={int(lora['r'])}) {lora['peak_mb']:.0f} MiB"
                         + (f"; full − LoRA {d.text()} MiB" if d is not None else
                            " (one seed each: a 2% margin for allocator noise)") + ".",
                         "LoRA section 4.2", None, d, REASONS["memory"]))
    return out


# ------------------------------------------------------------------------------------------------- QLoRA Table 3
def table3_quantized_match(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "QLoRA Table 3, section 4"
    for (task, model), g in agg.groupby(["task", "model"]):
        ref_m = "lora_bf16" if (g["method"] == "lora_bf16").any() else "lora"
        quant = sorted(m for m in set(g["method"]) if str(m).startswith("qlora"))
        if not (g["method"] == ref_m).any() or not quant:
            continue
        ref_label = "LoRA on a bf16 base" if ref_m == "lora_bf16" else "LoRA on an fp32-stored base"
        per, parts = [], []
        for m in quant:
            for (t, r), _ in g[g["method"] == m].groupby(["targets", "r"]):
                lv, qv = find(g, method=ref_m, targets=t, r=r), find(g, method=m, targets=t, r=r)
                if lv is None or qv is None:
                    continue
                d = diff(qv, lv)
                parts.append(stats.equivalent(d, DELTA))
                per.append((m, t, r, d))
        nf = next(((t, r, d) for m, t, r, d in per if m == "qlora_nf4_dq"), None)
        if nf is not None:
            out.append(Claim("qlora_table3", f"{task}/{model}: NF4 with double quantization matches 16-bit LoRA "
                             f"({ref_label}; equivalence within {DELTA:g} point)", stats.equivalent(nf[2], DELTA),
                             f"NF4+DQ − {ref_m} ({targets_label(nf[0])}, r={int(nf[1])}): {_dtext(nf[2])}.", src, DELTA,
                             nf[2], REASONS["qlora_table3"]))
        if per:
            out.append(Claim("qlora_table3", f"{task}/{model}: every QLoRA data type matches 16-bit LoRA ({ref_label}; "
                             f"equivalence within {DELTA:g} point)", stats.all_of(parts),
                             "QLoRA − LoRA: " + "; ".join(f"{m} {targets_label(t)} r={int(r)} {_dtext(d)}"
                                                          for m, t, r, d in per) + ".",
                             src, DELTA, None, REASONS["qlora_table3"]))
        full = find(g, method="full")
        nf_row = find(g, method="qlora_nf4_dq")
        if full is not None and nf_row is not None:
            d = diff(nf_row, full)
            out.append(Claim("qlora_table3", f"{task}/{model}: NF4 with double quantization matches full fine-tuning "
                             f"(within {DELTA:g} point, or better)", stats.noninferior(d, DELTA),
                             f"full {_fmt(full['value'])}, NF4+DQ {_fmt(nf_row['value'])}; NF4+DQ − full {_dtext(d)}.",
                             src, DELTA, d, REASONS["qlora_table3"]))
        refs = [(ref_m, ref_label)] + ([("lora", "the same LoRA on an fp32-stored base (not the paper's reference: "
                                        "the one with the quantized runs' compute dtype)")] if ref_m != "lora" else [])
        for rm, rlabel in refs:
            lref = find(g, method=rm)
            if lref is None or pd.isna(lref.get("peak_mb")):
                continue
            mem, parts, dtypes = [], [], set()
            for m in quant:  # the same adapter placement and rank as the LoRA reference
                q = find(g, method=m, targets=lref["targets"], r=lref["r"]) if lref["targets"] != "-" else None
                if q is None or pd.isna(q.get("peak_mb")):
                    continue
                parts.append(needs_more_memory(lref, q)[0])
                mem.append(f"{m} {q['peak_mb']:.0f} MiB")
                dtypes.add(str(q.get("compute_dtype")))
            if not mem:
                continue
            reason = REASONS["memory"]
            if dtypes - {str(lref.get("compute_dtype"))}:  # e.g. a bf16-autocast reference against fp32 4-bit runs
                reason += (f"; and here the reference computes in {lref.get('compute_dtype')} while the quantized runs "
                           f"compute in {', '.join(sorted(dtypes))} (bitsandbytes dequantizes to the compute dtype; "
                           "on a CPU without a fast bf16 path the harness computes in fp32), so its activations "
                           "are smaller")
            out.append(Claim("memory", f"{task}/{model}: every quantized base (Int8 included) needs less training "
                             f"memory than {rlabel} (QLoRA's premise)", stats.all_of(parts),
                             f"peak over the process baseline at {targets_label(lref['targets'])} r={int(lref['r'])}: "
                             f"{rm} {lref['peak_mb']:.0f} MiB ({lref.get('compute_dtype')} compute); " + ", ".join(mem)
                             + " (paired over seeds where several ran; else a 2% margin).",
                             "QLoRA section 1 and Figure 1", None, None, reason))
    return out


# ------------------------------------------------------------------------------------------------- QLoRA Fig. 2/4
def figures_all_linear(agg: pd.DataFrame) -> list[Claim]:
    """QLoRA Figure 2 (LoRA on all linear layers is needed to match full fine-tuning) and Figure 4 (rank matters
    little once all layers are adapted)."""
    out = []
    for (task, model), g in agg.groupby(["task", "model"]):
        for m in ("lora", "lora_bf16", "qlora_nf4_dq", "qlora_nf4"):
            gm = g[g["method"] == m]
            ranks = sorted(set(int(r) for r in gm.loc[gm["targets"] == "all_linear", "r"].dropna())
                           & set(int(r) for r in gm.loc[gm["targets"] == "qv", "r"].dropna()))
            if ranks:
                ds = {r: diff(find(gm, targets="all_linear", r=r), find(gm, targets="qv", r=r)) for r in ranks}
                out.append(Claim("qlora_fig2", f"{task}/{model}, {m}: LoRA on all linear layers beats Wq,Wv only, at "
                                 "every rank", stats.all_of([stats.beats(d) for d in ds.values()]),
                                 "all linear − Wq,Wv: " + "; ".join(f"r={r} {_dtext(d)}" for r, d in ds.items()) + ".",
                                 "QLoRA Figure 2, section 4", None, None, SCALE_REASON))
            al = sorted(set(int(r) for r in gm.loc[gm["targets"] == "all_linear", "r"].dropna()))
            if len(al) > 1:
                d = diff(find(gm, targets="all_linear", r=al[-1]), find(gm, targets="all_linear", r=al[0]))
                out.append(Claim("qlora_fig4", f"{task}/{model}, {m}: with all linear layers adapted, rank matters "
                                 f"little (r={al[-1]} vs r={al[0]}, equivalence within {DELTA:g} point)",
                                 stats.equivalent(d, DELTA), f"r={al[-1]} − r={al[0]}: {_dtext(d)}.",
                                 "QLoRA Figure 4, section 4", DELTA, d, SCALE_REASON))
        full = find(g, method="full")
        for m in ("lora", "qlora_nf4_dq"):  # the paper's Figure 2 arms are QLoRA's; LoRA where a grid has it
            gm = g[g["method"] == m]
            al = _best_of(gm, "all_linear")
            qv = _best_of(gm, "qv")
            if full is None or al is None:
                continue
            d = diff(al, full)
            d2 = diff(qv, full) if qv is not None else None
            text = (f"all linear (r={int(al['r'])}) − full {_dtext(d)}"
                    + (f"; Wq,Wv (r={int(qv['r'])}) − full {_dtext(d2)}" if qv is not None else ""))
            verdicts = [stats.noninferior(d, DELTA)]
            if qv is not None:  # "needed": attention-only falls short where all-linear matches
                verdicts.append({stats.FAILS: stats.HOLDS, stats.HOLDS: stats.FAILS}.get(
                    stats.noninferior(d2, DELTA), stats.UNRESOLVED))
            out.append(Claim("qlora_fig2", f"{task}/{model}, {m}: LoRA on all linear layers is needed to match full "
                             f"fine-tuning (within {DELTA:g} point; each placement at its best rank here)",
                             stats.all_of(verdicts), text + ".", "QLoRA Figure 2, section 4", DELTA, d, SCALE_REASON))
    return out


def _best_of(g: pd.DataFrame, targets: str):
    """The best rank's row of a target set (None if it did not run): the comparison the figure draws."""
    rows = g[g["targets"] == targets]
    if rows.empty:
        return None
    return find(rows, r=rows.loc[rows["value"].idxmax(), "r"])


# ------------------------------------------------------------------------------------------------- QLoRA Table 2
def table2_data_types(agg: pd.DataFrame) -> list[Claim]:
    """Evaluation only, one deterministic evaluation per data type of the same eval examples. Where the runs saved
    per-example predictions (a classifier or regressor: MiniLM on STS-B) a type beats another when the paired
    bootstrap interval over the examples excludes 0 (perplexity: resampling answers, each with its NLL sum and token
    count); where they did not (records made before per-answer losses were saved) the numbers are shown and the
    verdict is "not resolved": the sampling error of the eval set is unknown."""
    out = []
    src = "QLoRA Table 2, section 4"
    caveat = (" One deterministic evaluation per data type on the same examples; per-example scores were not saved, so "
              "there is no interval and the verdict is left open whatever the direction.")
    names = ("full", "qlora_fp4", "qlora_fp4_dq", "qlora_nf4", "qlora_nf4_dq", "fake_int4", "fake_fp4_e3m0",
             "fake_nf4", "fake_fp4")
    labels = {"qlora_fp4": "FP4 (E2M1)", "qlora_fp4_dq": "FP4+DQ", "qlora_nf4": "NF4", "qlora_nf4_dq": "NF4+DQ",
              "fake_int4": "Int4 (simulated)", "fake_fp4_e3m0": "FP4 E3M0 (simulated)", "full": "full precision",
              "fake_nf4": "NF4 (simulated)", "fake_fp4": "FP4 (simulated)"}
    for (task, model), g in agg.groupby(["task", "model"]):
        rows = {m: find(g, method=m) for m in names}
        higher = bool(next(iter(r for r in rows.values() if r is not None), {}).get("higher_better", True))
        what = "scores higher" if higher else "has lower perplexity"

        def v(m):
            return float(rows[m]["value"])

        def better(a: str, b: str, claim: str, paper: str) -> None:
            if rows[a] is None or rows[b] is None:
                return
            d = diff(rows[a], rows[b]) if higher else diff(rows[b], rows[a])  # > 0: a is better
            nums = f"{labels[a]} {v(a):.3f}, {labels[b]} {v(b):.3f} ({v(a) - v(b):+.3f})"
            if d is not None:
                verdict, ev = stats.beats(d), f"{nums}; {'A − B' if higher else 'B − A'} {d.text()}."
            else:  # no interval, no verdict: the numbers are shown, the sampling error of the eval set is unknown
                verdict, ev = stats.UNRESOLVED, nums + "." + caveat
            out.append(Claim("qlora_table2", f"{task}/{model}: {claim} ({what}; the paper: {paper})", verdict, ev, src,
                             None, d, REASONS["qlora_table2"]))

        better("qlora_nf4", "qlora_fp4", "NF4 beats FP4 (E2M1)", "NF4+DQ 27.41 vs Float4 E2M1 31.07")
        better("qlora_nf4_dq", "qlora_fp4_dq", "with double quantization too, NF4 beats FP4", "no DQ row for FP4")
        better("qlora_nf4", "fake_int4", "NF4 beats Int4", "NF4+DQ 27.41 vs Int4 34.34")
        better("fake_fp4_e3m0", "qlora_fp4", "FP4 E3M0 beats FP4 E2M1", "29.48 vs 31.07")
        better("qlora_fp4", "fake_int4", "FP4 E2M1 beats Int4", "31.07 vs 34.34")
        for sim, real in (("fake_nf4", "qlora_nf4"), ("fake_fp4", "qlora_fp4")):
            if rows[sim] is not None and rows[real] is not None:
                gap = abs(v(sim) - v(real))
                out.append(Claim("qlora_table2", f"{task}/{model}: the torch simulation of {labels[real]} scores as "
                                 "bitsandbytes' own (within 0.1 point: the same codes and rounding, a test checks "
                                 "the weights are identical; only the matmul kernels differ)",
                                 stats.HOLDS if gap <= 0.1 else stats.FAILS,
                                 f"{labels[sim]} {v(sim):.3f}, {labels[real]} {v(real):.3f}.", SANITY_BOUND))
        bits = {m: rows[m] for m in ("qlora_nf4", "qlora_nf4_dq", "qlora_fp4", "qlora_fp4_dq")}
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
                             "(within 0.01)", stats.HOLDS if all(abs(x - 0.373) <= 0.01 for x in saved) else stats.FAILS,
                             f"measured on the quantized linear layers ({note}): " + ", ".join(
                                 f"{a} {bits[a][key]:.3f} -> {b} {bits[b][key]:.3f} "
                                 f"({x:.3f} saved)" for (a, b), x in zip(pairs, saved)) + ". Exact byte counts.",
                             "QLoRA section 3 (Double Quantization)"))
        if rows["full"] and rows["qlora_nf4_dq"]:
            d = v("qlora_nf4_dq") - v("full")
            worse = -d if higher else d
            out.append(Claim("qlora_table2", f"{task}/{model}: NF4+DQ costs less than 10% of the full-precision "
                             "base's score (not a paper claim: a sanity bound for a 4-bit type)",
                             stats.HOLDS if worse < 0.1 * abs(v("full")) else stats.FAILS,
                             f"full precision {v('full'):.3f}, NF4+DQ {v('qlora_nf4_dq'):.3f} "
                             f"({100 * d / v('full'):+.1f}%).", SANITY_BOUND))
    return out


# ------------------------------------------------------------------------------------------------- QLoRA Table 4
def table4_mmlu(agg: pd.DataFrame) -> list[Claim]:
    out = []
    src = "QLoRA Table 4, section 4"
    for (task, model), g in agg.groupby(["task", "model"]):
        def row(m):
            r = find(g, method=m)
            if r is None or not r.get("mmlu_values"):
                return None
            return {"values": r["mmlu_values"], "value": float(r["mmlu_after"])}

        bf, nf, fp = row("lora_bf16"), row("qlora_nf4_dq"), row("qlora_fp4")
        if bf and nf:
            d = stats.compare(nf["values"], bf["values"])
            out.append(Claim("qlora_table4", f"{task}/{model}: MMLU after tuning on an NF4+DQ base matches a BF16 base "
                             f"(equivalence within {DELTA:g} point)", stats.equivalent(d, DELTA),
                             f"BF16 {_fmt(bf['value'])}, NF4+DQ {_fmt(nf['value'])}; NF4+DQ − BF16 {_dtext(d)}.",
                             src, DELTA, d, REASONS["qlora_table3"]))
        if bf and fp:
            d = stats.compare(bf["values"], fp["values"])
            out.append(Claim("qlora_table4", f"{task}/{model}: FP4 trails BF16", stats.beats(d),
                             f"BF16 {_fmt(bf['value'])}, FP4 {_fmt(fp['value'])}; BF16 − FP4 {_dtext(d)}.",
                             src, None, d, SCALE_REASON))
    return out


CHECKS = {
    "lora_table2": [table2_lora_matches_full, memory_full_above_lora],
    "lora_table3": [table3_e2e_lora_matches_full, table3_quantized_match, memory_full_above_lora],
    "lora_table5": [table5_more_types_lower_rank],
    "lora_table6": [table6_low_rank_suffices],
    "qlora_table3": [table3_quantized_match, memory_full_above_lora, figures_all_linear],
    "qlora_table2": [table2_data_types],
    "qlora_fig2_fig4": [figures_all_linear, memory_full_above_lora],
    "qlora_table4": [table4_mmlu],
    "sanity": [],  # fine-tuning vs its baselines (harness/report/sanity.py), no paper claim
    # a generic grid: whichever claims it can test
    None: [table6_low_rank_suffices, table3_quantized_match, memory_full_above_lora, figures_all_linear],
}


# claims on what fine-tuning reaches: they rest only on a task that make sanity shows learnable (memory claims and
# evaluation-only ones do not depend on it). QLoRA Table 4 too: two bases "match" on MMLU after tuning is no
# evidence when the tuning is not shown to have done anything
GATED = (table6_low_rank_suffices, table5_more_types_lower_rank, table2_lora_matches_full, table3_quantized_match,
         table3_e2e_lora_matches_full,
         figures_all_linear, table4_mmlu)


def task_key(task, model, pair_encoding) -> str:
    """A local task as make sanity checks it: task, model and (for sentence pairs) the encoding."""
    pe = pair_encoding if isinstance(pair_encoding, str) and pair_encoding else "-"
    return f"{task}/{model}/{pe}"


def _not_evidence(c: Claim, key: str, checked: bool) -> Claim:
    why = ("make sanity does not show fine-tuning clearly above its baselines there" if checked else
           "make sanity has not checked it")
    return Claim(c.table, c.claim, stats.UNRESOLVED,
                 f"Not evidence: {key.removesuffix('/-')} is not usable for claims ({why}; reports/sanity/). "
                 f"Measured: {c.evidence}", c.source, c.delta, c.diff, c.reason)


def check(table: str | None, agg: pd.DataFrame, usable: dict[str, bool] | None = None) -> list[Claim]:
    """The claims `table`'s checks can test on `agg`. `usable` ({task_key: usable for claims}, from the sanity
    experiment's records): a quality claim on a task that is not usable (or not checked) is printed with its
    numbers but decided "not resolved"; None = no sanity run to consult, nothing gated."""
    if agg.empty:
        return []
    out = []
    for fn in CHECKS.get(table, CHECKS[None]):
        if usable is None or fn not in GATED:
            out += fn(agg)
            continue
        keys = [task_key(t, m, pe) for t, m, pe in zip(agg["task"], agg["model"], agg.get("pair_encoding",
                                                                                           [None] * len(agg)))]
        for key in dict.fromkeys(keys):
            found = fn(agg[[k == key for k in keys]])
            if usable.get(key) is True:
                out += found
            else:
                out += [c if c.table == "memory" else _not_evidence(c, key, key in usable) for c in found]
    return out
