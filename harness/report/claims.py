"""The papers' claims, checked against our aggregated runs. Differences are in metric points (x100 scale).

Each claim is one statement of a paper with its source (table, figure or section), decided by harness.report.stats:
"holds", "fails" or "not resolved", printed with the numbers that decided it (the difference, its interval, n and
how it was computed). Comparisons are paired by seed (seed s draws the same training subset and head init in every
configuration); with one seed, a paired bootstrap over evaluation examples where both runs saved predictions; else
the noise is unknown and nothing is resolved. The margin of every "matches" (`DELTA`) is fixed here, before any
number is seen. A claim our runs contradict says so, with the likely reason.
"""

from __future__ import annotations

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


# ------------------------------------------------------------------------------------------------- Table 5


# ------------------------------------------------------------------------------------------------- Table 2
def lora_reference(g: pd.DataFrame):
    """The LoRA configuration a claim compares with full fine-tuning: the papers' Wq,Wv where it ran, else any."""
    return find(g, method="lora", targets="qv") or find(g, method="lora")


MEMORY_MARGIN = 0.02  # one seed each: a peak within 2% of the other's is allocator noise, not a difference


def needs_more_memory(big: dict, small: dict, parts: int = 1) -> tuple[str, stats.Diff | None]:
    """(verdict, difference) of "`big` needs more training memory than `small`": peaks paired over seeds where
    both ran several (`parts`: of a claim made of several such comparisons), else the two single peaks with the
    MEMORY_MARGIN band left unresolved."""
    d = stats.compare(big.get("peaks") or {}, small.get("peaks") or {})
    if d is not None:
        return stats.beats(d, parts=parts), d
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


# ------------------------------------------------------------------------------------------------- QLoRA Fig. 2/4


# ------------------------------------------------------------------------------------------------- QLoRA Table 2


# ------------------------------------------------------------------------------------------------- QLoRA Table 4


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
    from harness.report.paper_tables import CHECKS, GATED  # each paper table's module lists its checks

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
