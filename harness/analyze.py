"""What the adapters learned (LoRA paper section 7) from an experiment's saved adapters:

    python -m harness.analyze experiment=lora_table6 [root=outputs] [out=reports/analysis]

-> reports/analysis/<experiment>/README.md, summary.json and heatmaps. Reads the experiment's ok records in the
results store, each run's saved adapter (adapter/adapter_model.safetensors), the adapter's weights before the first
step (adapter/adapter_init.safetensors, written by every run since it was added) and the base model's weights W
(rebuilt as the record says; a 4-bit or 8-bit base is dequantized by bitsandbytes' own routine). The linear algebra is
harness/analysis.py; the verdicts use harness/report/stats.py as every report does.

Measured, for each adapted weight type (Wq, Wv, ...) and every layer:
- how far training moved A from its initialisation, ‖A - A0‖ / ‖A0‖, and ‖Delta W‖ / ‖W‖ (when A barely
  moved, a subspace similarity measures the random initialisation, not learning: the same measure on the A0's is
  shown beside it);
- Figure 3: phi(A_r8, A_r64, i, j) between the two ranks' runs of the same seed;
- Figure 4: phi between two seeds' r=64 runs, beside random Gaussian matrices of the same shapes;
- Table 7: ‖U^T W V‖ for U, V the top-r singular vectors of Delta W, of W and random, and the amplification
  factor ‖Delta W‖ / ‖U^T W V‖, at a low and a high rank.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import analysis
from harness.cli import key_value_args
from harness.records import ADAPTER_INIT_NAME
from harness.report import stats

log = logging.getLogger("harness.analyze")

ADAPTER_FILE = "adapter_model.safetensors"
KIND_LABELS = {"q": "Wq", "k": "Wk", "v": "Wv", "o": "Wo"}
N_NULL = 200  # random Gaussian pairs behind each "beyond random" test
N_RANDOM = 20  # random orthonormal U, V pairs averaged for Table 7's "random" column


class AnalysisError(RuntimeError):
    pass


@dataclass
class Adapter:
    """One run's adapter: per (kind, layer) its A (r x d_in), B (d_out x r), A0 (A before the first step, or None),
    the prefix that names the module, and the scale that multiplies B A."""
    run_dir: Path
    rec: dict
    targets: str
    r: int
    seed: int
    scale: float
    mats: dict[tuple[str, int], dict] = field(default_factory=dict)

    @property
    def group(self) -> tuple:
        c = self.rec["config"]
        return c["model"]["name"], c["task"]["name"], c["method"]["name"]


def _kind(prefix: str, arch: str | dict) -> str:
    """'q', 'v', ... for an attention projection (the model's target map: methods.TARGETS of a known arch, or its
    own model.targets), else the module's own name (all_linear)."""
    from harness.methods import TARGETS

    mapping = TARGETS.get(arch, {}) if isinstance(arch, str) else arch
    for letter, suffixes in mapping.items():
        if any(prefix == s or prefix.endswith("." + s) for s in suffixes):
            return letter
    m = re.search(r"\.\d+\.(.+)$", prefix)  # what follows the layer index, e.g. intermediate.dense
    return m[1] if m else prefix.split(".")[-1]


def _layer(prefix: str) -> int:
    m = re.search(r"\.(\d+)\.", prefix)
    if not m:
        raise AnalysisError(f"{prefix}: no layer index in the module's name")
    return int(m[1])


def read_adapter(rec: dict) -> Adapter:
    """The run's saved adapter as numpy matrices (float64), with its initial A where the run saved it."""
    from safetensors.numpy import load_file

    run_dir = Path(rec["_dir"])
    path = run_dir / "adapter" / ADAPTER_FILE
    if not path.is_file():
        raise AnalysisError(f"{run_dir}: no saved adapter ({path} is missing)")
    lora = (rec.get("method") or {}).get("lora") or {}
    cfg = rec["config"]
    r = int(lora.get("r") or cfg["lora"]["r"])
    scale = lora.get("scale")
    if scale is None:  # records written before the scale was recorded
        alpha = float(lora.get("alpha") or cfg["lora"]["alpha"])
        scale = alpha / math.sqrt(r) if lora.get("use_rslora") else alpha / r
    saved = load_file(str(path))
    init_path = run_dir / "adapter" / ADAPTER_INIT_NAME
    init = load_file(str(init_path)) if init_path.is_file() else {}
    ad = Adapter(run_dir, rec, str(cfg["lora"]["targets"]), r, int(cfg["train"]["seed"]), float(scale))
    arch = cfg["model"].get("targets") or cfg["model"]["arch"]
    for key, a in saved.items():
        if not key.endswith("lora_A.weight"):
            continue
        prefix = key[: -len(".lora_A.weight")]
        b = saved[prefix + ".lora_B.weight"]
        a0 = init.get(key)
        ad.mats[(_kind(prefix, arch), _layer(prefix))] = {
            "prefix": prefix, "A": a.astype(np.float64), "B": b.astype(np.float64),
            "A0": None if a0 is None else a0.astype(np.float64)}
    if not ad.mats:
        raise AnalysisError(f"{path}: no LoRA A/B matrices in it")
    return ad


_MODELS: dict[tuple, object] = {}  # (model name, source, method) -> the rebuilt base model (dequantized)
_WEIGHTS: dict[tuple, np.ndarray] = {}  # (model key, module prefix) -> W


def _model_key(ad: Adapter) -> tuple:
    c = ad.rec["config"]
    return c["model"]["name"], c["model"]["source"], c["method"]["name"]


def weight(ad: Adapter, prefix: str) -> np.ndarray:
    """W (d_out x d_in, float64) of the module `prefix` in the run's base model, rebuilt once per (model, method)
    as the record says, a 4-bit or 8-bit base dequantized by bitsandbytes' own routine."""
    key = _model_key(ad)
    if (key, prefix) not in _WEIGHTS:
        if key not in _MODELS:
            from harness.eval import EvalError, load_run
            from harness.merge import _dequantize

            try:
                _, _, model, _, _ = load_run(ad.run_dir)
            except EvalError as e:
                raise AnalysisError(str(e)) from None
            _dequantize(model)
            _MODELS[key] = model
        mod = _MODELS[key].get_submodule(prefix)
        m = next(m for m in ad.mats.values() if m["prefix"] == prefix)
        w = getattr(mod, "base_layer", mod).weight.detach().float().cpu().numpy().astype(np.float64)
        if w.shape != (m["B"].shape[0], m["A"].shape[1]):  # GPT-2's Conv1D stores W transposed
            w = w.T
        _WEIGHTS[(key, prefix)] = w
    return _WEIGHTS[(key, prefix)]


def base_weights(ad: Adapter) -> dict[str, np.ndarray]:
    """{module prefix: W} for every module the adapter adapts."""
    return {m["prefix"]: weight(ad, m["prefix"]) for m in ad.mats.values()}


# ------------------------------------------------------------------------------------------------ measures
def movement(ad: Adapter) -> dict[str, dict]:
    """Per kind, over layers: median ‖A - A0‖ / ‖A0‖ (None without A0), median ‖Delta W‖ / ‖W‖, median ‖B‖."""
    out = {}
    ws = base_weights(ad)
    for kind in sorted({k for k, _ in ad.mats}):
        ms = [m for (k, _), m in sorted(ad.mats.items()) if k == kind]
        moved = [analysis.moved(m["A"], m["A0"]) for m in ms if m["A0"] is not None]
        rel = [float(np.linalg.norm(analysis.delta_w(m["A"], m["B"], ad.scale)) / np.linalg.norm(ws[m["prefix"]]))
               for m in ms]
        out[kind] = {"A_moved": float(np.median(moved)) if moved else None,
                     "dW_over_W": float(np.median(rel)),
                     "B_norm": float(np.median([np.linalg.norm(m["B"]) for m in ms]))}
    return out


def _common_layers(a: Adapter, b: Adapter, kind: str) -> list[int]:
    return sorted({layer for k, layer in a.mats if k == kind} & {layer for k, layer in b.mats if k == kind})


def pair_grids(a: Adapter, b: Adapter, kind: str, init: bool = False) -> np.ndarray | None:
    """phi(A_a, A_b, i, j) per layer (layers x r_a x r_b); with init=True the same on their A0's (None if absent)."""
    grids = []
    for layer in _common_layers(a, b, kind):
        ma, mb = a.mats[(kind, layer)], b.mats[(kind, layer)]
        x, y = (ma["A0"], mb["A0"]) if init else (ma["A"], mb["A"])
        if x is None or y is None:
            return None
        grids.append(analysis.similarity_grid(x, y))
    return np.stack(grids) if grids else None


def null_grids(shape_a: tuple[int, int], shape_b: tuple[int, int], layers: int, n: int = N_NULL, seed: int = 0
               ) -> np.ndarray:
    """n draws of `layers` independent random-Gaussian similarity grids (n x layers x r_a x r_b)."""
    return np.stack([np.stack([analysis.random_similarity(shape_a, shape_b, seed=seed + 1000 * k + layer)
                               for layer in range(layers)]) for k in range(n)])


def diag_stat(grid: np.ndarray, top: int) -> np.ndarray:
    """Mean of phi(i, i) for i = 1..top, per leading index (layers, or draws x layers)."""
    idx = np.arange(top)
    return grid[..., idx, idx].mean(axis=-1)


def amplification_of(ad: Adapter, kind: str) -> dict | None:
    """LoRA Table 7 for `kind`, each quantity the mean over layers (None when the adapter does not adapt `kind`)."""
    ws = base_weights(ad)
    rows = []
    for (k, layer), m in sorted(ad.mats.items()):
        if k != kind:
            continue
        rows.append(analysis.amplification(ws[m["prefix"]], analysis.delta_w(m["A"], m["B"], ad.scale), ad.r,
                                           seed=layer, n_random=N_RANDOM))
    if not rows:
        return None
    keys = ["W_norm", "dW_norm", "W_on_dW", "W_on_W", "W_on_random", "amplification"]
    return {k: float(np.mean([row[k] for row in rows])) for k in keys} | {"r": ad.r, "layers": len(rows)}


# ------------------------------------------------------------------------------------------------ verdicts
@dataclass
class Claim:
    source: str
    claim: str
    verdict: str
    numbers: str
    parts: dict = field(default_factory=dict)


def _iv(d: stats.Diff | None, digits: int = 3) -> str:
    if d is None:
        return "n/a (fewer than two seeds)"
    lo, hi = d.interval()
    return f"{d.mean:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}] (95% interval, {d.how})"


def _over_seeds(values: dict) -> stats.Diff | None:
    """The mean of per-seed values with its t-interval (a level, not a difference)."""
    d = stats.mean_t(values)
    if d is not None:
        d.how = "over seeds " + ",".join(map(str, values))
    return d


def _level(d: stats.Diff | None) -> str:
    if d is None:
        return "n/a (fewer than two seeds)"
    lo, hi = d.interval()
    return f"{d.mean:.3f} [{lo:.3f}, {hi:.3f}] (95% interval, {d.how})"


# ------------------------------------------------------------------------------------------------ the analysis
def analyze(records: list[dict], lo_rank: int = 8, hi_rank: int = 64, amp_ranks: tuple[int, int] = (4, 64),
            fig_targets: str = "qv", kinds: tuple[str, ...] = ("q", "v"), paper: dict | None = None) -> dict:
    """Everything the report shows, as plain data (summary.json). `paper`: LoRA Table 7's values by rank (Wq), the
    paper_values.yaml entry's `values`."""
    ads = []
    for rec in records:
        if rec.get("status") != "ok" or not rec.get("adapter"):
            continue
        try:
            ads.append(read_adapter(rec))
        except AnalysisError as e:
            log.warning("skipped: %s", e)
    if not ads:
        raise AnalysisError("no ok run of this experiment has a saved adapter (LoRA runs with train.save_adapter)")
    by = {(a.group, a.targets, a.r, a.seed): a for a in ads}
    groups = sorted({a.group for a in ads})
    out = {"runs": len(ads), "groups": [], "lo_rank": lo_rank, "hi_rank": hi_rank, "amp_ranks": list(amp_ranks),
           "fig_targets": fig_targets}
    for g in groups:
        gads = [a for a in ads if a.group == g]
        res = {"model": g[0], "task": g[1], "method": g[2], "movement": [], "fig3": {}, "fig4": {}, "table7": {},
               "claims": [], "d_in": {}}
        for a in sorted(gads, key=lambda a: (a.targets, a.r, a.seed)):
            res["movement"].append({"targets": a.targets, "r": a.r, "seed": a.seed, "by_kind": movement(a)})
        seeds = sorted({a.seed for a in gads if a.targets == fig_targets})
        for kind in kinds:
            # Figure 3: r=lo vs r=hi, same seed
            pairs = [(by.get((g, fig_targets, lo_rank, s)), by.get((g, fig_targets, hi_rank, s))) for s in seeds]
            pairs = [(a, b) for a, b in pairs if a is not None and b is not None and _common_layers(a, b, kind)]
            if pairs:
                res["d_in"][kind] = int(pairs[0][0].mats[(kind, _common_layers(*pairs[0], kind)[0])]["A"].shape[1])
                res["fig3"][kind] = _fig3(pairs, kind, res["d_in"][kind])
            # Figure 4: r=hi, two seeds
            hi = [by[(g, fig_targets, hi_rank, s)] for s in seeds if (g, fig_targets, hi_rank, s) in by]
            spairs = [(hi[i], hi[j]) for i in range(len(hi)) for j in range(i + 1, len(hi))
                      if _common_layers(hi[i], hi[j], kind)]
            if spairs:
                res["fig4"][kind] = _fig4(spairs, kind)
            # Table 7: the amplification at a low and a high rank
            amp = {}
            for r in amp_ranks:
                per_seed = {s: amplification_of(by[(g, fig_targets, r, s)], kind) for s in seeds
                            if (g, fig_targets, r, s) in by}
                per_seed = {s: v for s, v in per_seed.items() if v is not None}
                if per_seed:
                    amp[r] = per_seed
            if amp:
                res["table7"][kind] = amp
        res["claims"] = [c.__dict__ for c in _claims(res, lo_rank, hi_rank, amp_ranks, paper)]
        out["groups"].append(res)
    return out


def _fig3(pairs: list[tuple[Adapter, Adapter]], kind: str, d_in: int) -> dict:
    lo, hi = pairs[0][0].r, pairs[0][1].r
    trained = {a.seed: pair_grids(a, b, kind) for a, b in pairs}
    init = {a.seed: pair_grids(a, b, kind, init=True) for a, b in pairs}
    init = {s: v for s, v in init.items() if v is not None}
    top = {s: float(v[:, 0, hi - 1].mean()) for s, v in trained.items()}  # phi(1, hi), mean over layers
    # each direction's own overlap with the r=hi subspace: i phi(i, hi) - (i-1) phi(i-1, hi)
    def marginal(v):
        cum = v[:, :, hi - 1] * np.arange(1, lo + 1)
        return np.diff(np.concatenate([np.zeros((v.shape[0], 1)), cum], axis=1), axis=1).mean(axis=0)
    marg = {s: marginal(v) for s, v in trained.items()}
    return {
        "seeds": sorted(trained), "layers": int(next(iter(trained.values())).shape[0]),
        "mean_grid": np.mean([v.mean(axis=0) for v in trained.values()], axis=0).tolist(),
        "mean_grid_init": np.mean([v.mean(axis=0) for v in init.values()], axis=0).tolist() if init else None,
        "top": top,
        "top_init": {s: float(v[:, 0, hi - 1].mean()) for s, v in init.items()},
        "top_random": hi / d_in,  # two random subspaces of dims 1 and hi in R^d_in overlap by hi / d_in on average
        "marginal": {s: v.tolist() for s, v in marg.items()},
        "first_minus_rest": {s: float(v[0] - v[1:].mean()) for s, v in marg.items()},
    }


def _fig4(spairs: list[tuple[Adapter, Adapter]], kind: str) -> dict:
    grids = {f"{a.seed}-{b.seed}": pair_grids(a, b, kind) for a, b in spairs}
    any_grid = next(iter(grids.values()))
    layers, r = any_grid.shape[0], any_grid.shape[1]
    m = spairs[0][0].mats[(kind, _common_layers(*spairs[0], kind)[0])]["A"]
    top = min(8, r)
    null = null_grids(m.shape, m.shape, layers)
    null_stat = diag_stat(null, top).mean(axis=1)  # per draw: mean over layers of mean_{i<=top} phi(i, i)
    obs = {p: float(diag_stat(v, top).mean()) for p, v in grids.items()}
    p_values = {p: float((1 + np.sum(null_stat >= v)) / (1 + len(null_stat))) for p, v in obs.items()}
    init = {f"{a.seed}-{b.seed}": pair_grids(a, b, kind, init=True) for a, b in spairs}
    return {"pairs": sorted(grids), "layers": layers, "top": top,
            "mean_grid": np.mean([v.mean(axis=0) for v in grids.values()], axis=0).tolist(),
            "random_grid": null.mean(axis=(0, 1)).tolist(),
            "diag": obs, "diag_init": {p: float(diag_stat(v, top).mean()) for p, v in init.items() if v is not None},
            "null_mean": float(null_stat.mean()), "null_q95": float(np.quantile(null_stat, 0.95)),
            "null_q99": float(np.quantile(null_stat, 0.99)), "null_draws": len(null_stat), "p_values": p_values}


SHARE = 0.1  # Table 7's "not W's top directions": at most this share of W's top-direction projection, above random


def _share(v: dict) -> float:
    """(‖U^T W V‖ on Delta W's directions - on random) / (on W's own top directions - on random)."""
    return (v["W_on_dW"] - v["W_on_random"]) / (v["W_on_W"] - v["W_on_random"])


def _claims(res: dict, lo: int, hi: int, amp_ranks: tuple[int, int], paper: dict | None = None) -> list[Claim]:
    out = []
    tag = f"{res['task']}/{res['model']}, {res['method']}"
    f3 = res["fig3"]
    if f3:
        parts, nums = {}, []
        for kind, v in f3.items():
            d = _over_seeds(v["top"])
            d0 = _over_seeds(v["top_init"])
            parts[kind] = stats.above(d, 0.5, parts=len(f3))
            nums.append(f"{KIND_LABELS.get(kind, kind)}: phi(1, {hi}) {_level(d)}; the same on the initial A's "
                        f"{_level(d0)}; random {v['top_random']:.3f}")
        out.append(Claim("LoRA Figure 3, section 7.2",
                         f"{tag}: the top singular direction of the r={lo} adapter lies inside the r={hi} adapter's "
                         f"subspace (phi(1, {hi}) above 0.5, mean over layers and seeds)",
                         stats.all_of(list(parts.values())), "; ".join(nums), parts))
        parts, nums = {}, []
        for kind, v in f3.items():
            d = stats.mean_t(v["first_minus_rest"])
            parts[kind] = stats.beats(d, parts=len(f3))
            nums.append(f"{KIND_LABELS.get(kind, kind)}: top direction's overlap minus directions 2-{lo}'s mean "
                        f"{_iv(d)}")
        out.append(Claim("LoRA Figure 3, section 7.2",
                         f"{tag}: directions other than the top one of r={lo} overlap less with r={hi}",
                         stats.all_of(list(parts.values())), "; ".join(nums), parts))
    f4 = res["fig4"]
    if f4:
        parts, nums = {}, []
        for kind, v in f4.items():
            k = len(v["p_values"])
            ps = list(v["p_values"].values())
            parts[kind] = (stats.HOLDS if all(p < 0.05 / k for p in ps) else
                           stats.FAILS if all(p > 0.05 for p in ps) else stats.UNRESOLVED)
            nums.append(f"{KIND_LABELS.get(kind, kind)}: mean phi(i, i), i <= {v['top']}, between seeds "
                        + ", ".join(f"{p} {x:.3f}" for p, x in v["diag"].items())
                        + f"; random Gaussian {v['null_mean']:.3f} (99th percentile {v['null_q99']:.3f} over "
                        f"{v['null_draws']} draws); p " + ", ".join(f"{p:.3f}" for p in ps))
        out.append(Claim("LoRA Figure 4, section 7.2",
                         f"{tag}: two seeds' r={hi} adapters share their top directions beyond chance (random "
                         f"Gaussian matrices of the same shape; every seed pair at p < 0.05 / pairs)",
                         stats.all_of(list(parts.values())), "; ".join(nums), parts))
        if "q" in f4 and "v" in f4:
            common = sorted(set(f4["q"]["diag"]) & set(f4["v"]["diag"]))
            diffs = {i: f4["q"]["diag"][p] - f4["v"]["diag"][p] for i, p in enumerate(common)}
            d = stats.mean_t(diffs)
            if d is not None:
                d.how = f"over the seed pairs {', '.join(common)} (they share runs: the interval is optimistic)"
            out.append(Claim("LoRA Figure 4, section 7.2",
                             f"{tag}: Delta Wq has a higher intrinsic rank than Delta Wv (more top directions shared "
                             "between seeds)", stats.beats(d), f"Wq - Wv: {_iv(d)}"))
    t7 = res["table7"]
    for kind, amp in t7.items():
        if not set(amp_ranks) <= set(amp):
            continue
        lbl = KIND_LABELS.get(kind, kind)
        parts, nums = {}, []
        for r in amp_ranks:
            d = stats.mean_t({s: v["W_on_dW"] - v["W_on_random"] for s, v in amp[r].items()})
            parts[f"r={r} correlated"] = stats.beats(d, parts=len(amp_ranks))
            nums.append(f"r={r}: ‖U^T W V‖ on Delta W's directions - on random ones {_iv(d)}")
        out.append(Claim("LoRA Table 7, section 7.3",
                         f"{tag}: Delta {lbl} is correlated with {lbl} more than a random matrix is",
                         stats.all_of(list(parts.values())), "; ".join(nums), parts))
        parts, nums = {}, []
        for r in amp_ranks:
            d = _over_seeds({s: _share(v) for s, v in amp[r].items()})
            parts[f"r={r} not W's top"] = stats.below(d, SHARE, parts=len(amp_ranks))
            nums.append(f"r={r}: share {_level(d)}")
        pv = ("; the paper's (GPT-3, Wq): " + ", ".join(f"r={r} {_share(v):.3f}" for r, v in paper.items())
              if paper and kind == "q" else "")
        out.append(Claim("LoRA Table 7, section 7.3",
                         f"{tag}: Delta {lbl} amplifies directions that {lbl} does not emphasise: W's component along "
                         f"Delta W's directions holds under {SHARE:.0%} of what W's own top directions hold (each "
                         "measured above the random directions' level)", stats.all_of(list(parts.values())), "; ".join(nums) + pv, parts))
        d = _over_seeds({s: v["amplification"] for s, v in amp[amp_ranks[0]].items()})
        out.append(Claim("LoRA Table 7, section 7.3",
                         f"{tag}: at r={amp_ranks[0]} the amplification factor of Delta {lbl} is large (above 1: the "
                         f"update is larger than {lbl}'s own component in its directions; the paper: 21.5)",
                         stats.above(d, 1.0), f"factor at r={amp_ranks[0]} {_level(d)}"))
        a, b = amp_ranks
        d = stats.paired_t({s: v["amplification"] for s, v in amp[a].items()},
                           {s: v["amplification"] for s, v in amp[b].items()})
        out.append(Claim("LoRA Table 7, section 7.3",
                         f"{tag}: the amplification factor of Delta {lbl} is larger at r={a} than at r={b}",
                         stats.beats(d), f"factor at r={a} - at r={b}: {_iv(d, 2)}"))
    return out


# ------------------------------------------------------------------------------------------------ rendering
def _fmt(x, digits=3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _summ(values) -> str:
    s = stats.summarize(list(values))
    if s.n == 0:
        return "–"
    if s.lo is None:
        return f"{s.mean:.3f} (1 seed)"
    if s.sd == 0:
        return f"{s.mean:.3f}"  # the same for every seed (W itself; the random directions are seeded by layer)
    return f"{s.mean:.3f} [{s.lo:.3f}, {s.hi:.3f}]"


def _heatmap_file(path: Path, panels: list[list[tuple[np.ndarray | None, str]]], vmax: float, height: float) -> None:
    """A grid of phi heatmaps (rows x columns of (grid, title); a None grid leaves its cell empty), one color scale
    from 0 to vmax; i (rows) and j (columns) numbered from 1."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), len(panels[0]), figsize=(5.5 * len(panels[0]), height), squeeze=False,
                             layout="constrained")
    im = None
    for r, row in enumerate(panels):
        for c, (g, title) in enumerate(row):
            ax = axes[r][c]
            if g is None:
                ax.set_axis_off()
                continue
            g = np.asarray(g)
            im = ax.imshow(g, vmin=0, vmax=vmax, aspect="auto", cmap="viridis",
                           extent=(0.5, g.shape[1] + 0.5, g.shape[0] + 0.5, 0.5))
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("j"), ax.set_ylabel("i")
    if im is not None:
        fig.colorbar(im, ax=axes, shrink=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def heatmaps(res: dict, out: Path, lo: int, hi: int) -> list[str]:
    """Figure 3 (trained and at initialisation) and Figure 4 (two seeds and random Gaussian), one column per weight."""
    files = []
    name = f"{res['task']}_{res['model']}_{res['method']}"
    if res["fig3"]:
        panels = [[(res["fig3"][k][key], f"{KIND_LABELS.get(k, k)}: phi(A_r={lo}, A_r={hi}, i, j), {what}")
                   for k in res["fig3"]] for key, what in (("mean_grid", "trained"), ("mean_grid_init", "at initialisation"))]
        files.append(f"fig3_{name}.png")
        _heatmap_file(out / files[-1], panels, 1.0, 6)
    if res["fig4"]:
        panels = [[(res["fig4"][k][key], f"{KIND_LABELS.get(k, k)}: phi(A_r={hi}, A'_r={hi}, i, j), {what}")
                   for k in res["fig4"]] for key, what in (("mean_grid", "two seeds"), ("random_grid", "random Gaussian"))]
        vmax = max([0.5] + [float(np.max(g)) for row in panels for g, _ in row])
        files.append(f"fig4_{name}.png")
        _heatmap_file(out / files[-1], panels, vmax, 10)
    return files


def render(name: str, result: dict, records: list[dict], out_root: Path, paper: dict | None) -> Path:
    out = out_root / name
    out.mkdir(parents=True, exist_ok=True)
    lo, hi = result["lo_rank"], result["hi_rank"]
    a_lo, a_hi = result["amp_ranks"]
    ok = [r for r in records if r.get("status") == "ok"]
    steps = sorted({int(r["steps"]) for r in ok if r.get("steps") is not None})
    cpus = sorted({(r.get("host") or {}).get("cpu") or "?" for r in ok})
    commits = sorted({(r.get("git") or {}).get("commit", "?")[:10] for r in ok})
    lines = [f"# Adapter analysis: {name} (LoRA paper section 7)", "",
             f"Generated by `python -m harness.analyze --experiment {name}` from the {result['runs']} saved adapters of "
             f"the experiment's ok runs (records in the results store), their weights before the first step and the "
             f"base models' weights. Do not edit: rerun `make analyze EXPERIMENT={name}`. Reproduce: "
             f"`make sweep EXPERIMENT={name}` then `make analyze EXPERIMENT={name}`.", "",
             f"Runs: {result['runs']} adapters; optimizer steps per run {', '.join(map(str, steps)) or '–'}; "
             f"CPU {', '.join(cpus)}; code {', '.join(commits)}. Figures 3 and 4 and Table 7 use the "
             f"`{result['fig_targets']}` runs (both Wq and Wv adapted, as in the paper); each number is the mean over "
             "the model's layers (the paper shows one layer of 96: GPT-3's 48th), then over seeds with a 95% "
             "t-interval.", ""]
    claims_all = []
    for g in result["groups"]:
        lines += [f"## {g['task']} / {g['model']} / {g['method']}", ""]
        # movement
        lines += ["### How far training moved the adapters", "",
                  "‖A - A0‖ / ‖A0‖: A's distance from its random initialisation (0 = untouched); ‖Delta W‖ / "
                  "‖W‖: the update's size beside the weight it adapts (median over layers; mean [min-max] over "
                  "seeds).", ""]
        kinds = sorted({k for m in g["movement"] for k in m["by_kind"]})
        head = ["targets", "r", "seeds"] + [f"{KIND_LABELS.get(k, k)} A moved" for k in kinds] + \
               [f"{KIND_LABELS.get(k, k)} dW/W" for k in kinds]
        lines += ["| " + " | ".join(head) + " |", "|" + "|".join([" :--- "] * 3 + [" ---: "] * 2 * len(kinds)) + "|"]
        rows: dict[tuple, list] = {}
        for m in g["movement"]:
            rows.setdefault((m["targets"], m["r"]), []).append(m)
        min_moved = math.inf
        for (t, r), ms in sorted(rows.items(), key=lambda x: (x[0][0], x[0][1])):
            cells = [t, str(r), str(len(ms))]
            for key in ("A_moved", "dW_over_W"):
                for k in kinds:
                    vals = [m["by_kind"].get(k, {}).get(key) for m in ms]
                    vals = [v for v in vals if v is not None]
                    if key == "A_moved" and vals:
                        min_moved = min(min_moved, min(vals))
                    cells.append(f"{np.mean(vals):.3f} [{min(vals):.3f}-{max(vals):.3f}]" if vals else "–")
            lines.append("| " + " | ".join(cells) + " |")
        lines += [""]
        if math.isfinite(min_moved):
            lines += [("Every adapter's A moved by at least {:.0%} of its initial norm: the similarities below "
                       "measure training, not only the initialisation; the same measures on the initial A's are "
                       "given beside them as the control.").format(min_moved) if min_moved >= 0.1 else
                      ("Some A's moved by only {:.1%} of their initial norm: where A barely moved, a subspace "
                       "similarity measures the random initialisation, so compare each value with the same measure "
                       "on the initial A's given beside it.").format(min_moved), ""]
        else:
            lines += ["These runs saved no initial A (runs made before adapter_init.safetensors existed): how far A "
                      "moved cannot be measured, and the similarities may partly measure the initialisation.", ""]
        # Figure 3
        if g["fig3"]:
            lines += [f"### Figure 3: subspace similarity between r={lo} and r={hi} (same seed)", "",
                      f"phi(A_r={lo}, A_r={hi}, i, j) = ‖U_i^T U_j‖^2 / min(i, j) over A's right-singular vectors. "
                      f"phi(1, {hi}): how much of r={lo}'s top direction lies inside r={hi}'s subspace (the paper: "
                      f"above 0.5; two random subspaces: {hi}/d_in). Directions 2-{lo}: each one's own overlap with "
                      f"r={hi}'s subspace.", "",
                      f"| weight | seeds | phi(1, {hi}) trained (direction 1's overlap) | phi(1, {hi}) at init | "
                      f"random ({hi}/d_in) | directions 2-{lo}: each one's overlap, mean |",
                      "| :--- | ---: | ---: | ---: | ---: | ---: |"]
            for kind, v in g["fig3"].items():
                marg = np.asarray(list(v["marginal"].values()))
                lines.append(f"| {KIND_LABELS.get(kind, kind)} | {len(v['seeds'])} | {_summ(v['top'].values())} | "
                             f"{_summ(v['top_init'].values())} | {v['top_random']:.3f} | "
                             f"{_summ(marg[:, 1:].mean(axis=1))} |")
            lines += [""]
        if g["fig4"]:
            lines += [f"### Figure 4: two seeds at r={hi}", "",
                      f"Mean of phi(i, i) for i = 1..{next(iter(g['fig4'].values()))['top']} between two seeds' "
                      f"r={hi} adapters, beside the same statistic for random Gaussian matrices of the same shape "
                      f"({N_NULL} draws) and for the two runs' initial A's.", "",
                      "| weight | seed pair | trained | at init | random: mean | random: 99th pct | p |",
                      "| :--- | :--- | ---: | ---: | ---: | ---: | ---: |"]
            for kind, v in g["fig4"].items():
                for p in v["pairs"]:
                    lines.append(f"| {KIND_LABELS.get(kind, kind)} | {p} | {v['diag'][p]:.3f} | "
                                 f"{_fmt(v['diag_init'].get(p))} | {v['null_mean']:.3f} | {v['null_q99']:.3f} | "
                                 f"{v['p_values'][p]:.3f} |")
            lines += [""]
        figs = heatmaps(g, out, lo, hi)
        for f in figs:
            lines += [f"![{f}]({f})", ""]
        # Table 7
        if g["table7"]:
            lines += [f"### Table 7: how Delta W relates to W (r={a_lo} and r={a_hi})", "",
                      "‖U^T W V‖_F with U, V the top-r left/right singular vectors of Delta W, of W itself, or a "
                      "random orthonormal pair; ‖Delta W‖_F / ‖U^T W V‖_F (Delta W's directions) is the "
                      "amplification factor. Mean over layers, then over seeds [95% t-interval]."
                      + (" Paper: GPT-3 175B, Wq of layer 48 (one seed)." if paper else ""), "",
                      "| weight | r | on Delta W | on W | on random | ‖W‖ | ‖Delta W‖ | amplification | paper: "
                      "on Delta W / on W / on random / ‖Delta W‖ / factor |",
                      "| :--- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | :--- |"]
            for kind, amp in g["table7"].items():
                for r, per in sorted(amp.items(), key=lambda x: int(x[0])):
                    pv = (paper or {}).get("values", {}).get(int(r)) if kind == "q" else None
                    pcell = (f"{pv['W_on_dW']} / {pv['W_on_W']} / {pv['W_on_random']} / {pv['dW_norm']} / "
                             f"{pv['dW_norm'] / pv['W_on_dW']:.1f}" if pv else "–")
                    cells = [_summ([v[k] for v in per.values()])
                             for k in ("W_on_dW", "W_on_W", "W_on_random", "W_norm", "dW_norm", "amplification")]
                    lines.append(f"| {KIND_LABELS.get(kind, kind)} | {r} | " + " | ".join(cells) + f" | {pcell} |")
            lines += [""]
        claims_all += g["claims"]
    lines += ["## Claims checked", "",
              "Verdicts as in every report (harness/report/stats.py): a threshold or a difference holds when its 95% "
              "t-interval over seeds lies on the claimed side, fails when it lies on the other, else not resolved. "
              "A claim of several parts (Wq and Wv, r=4 and r=64) holds when every part holds and fails when a part "
              "fails at the Bonferroni level (the 1 - 0.05/parts interval). The between-seed claim is a test "
              "against random Gaussian matrices (every seed pair's p below 0.05 / pairs).", "",
              "| Source | Claim | Verdict | Deciding numbers |", "| :--- | :--- | :--- | :--- |"]
    for c in claims_all:
        lines.append(f"| {c['source']} | {c['claim']} | **{c['verdict']}** | {c['numbers']} |")
    models = sorted({r["config"]["model"]["name"] for r in ok})
    d_in = sorted({d for g in result["groups"] for d in g["d_in"].values()})
    lines += ["", f"Scale: {', '.join(models)} (d_in {', '.join(map(str, d_in)) or '–'}) trained for "
              f"{', '.join(map(str, steps))} optimizer steps, not GPT-3 175B (d_in 12,288) trained to convergence. "
              "Where a verdict differs from the paper, the likely reasons are that scale (random subspaces of "
              "dimension r in R^d_in already overlap by r/d_in: 0.17 for r=64 in 384 dimensions, 0.005 in GPT-3's "
              "12,288) and the short training (Delta W is a few percent of W, so it has had little room to grow "
              "along any direction).", ""]
    (out / "README.md").write_text("\n".join(lines))
    summary = {"experiment": name, **result}
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=_json) + "\n")
    return out / "README.md"


def _json(x):
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(type(x))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.analyze", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiment", required=True, help="an experiment in the results store (e.g. lora_table6)")
    p.add_argument("--root", default="outputs", help="the output root holding results.sqlite and the runs")
    p.add_argument("--out", default="reports/analysis", help="where reports/analysis/<experiment>/ is written")
    p.add_argument("--ranks", type=int, nargs=2, default=(8, 64), metavar=("LOW", "HIGH"),
                   help="Figure 3's two ranks; HIGH is also Figure 4's (default 8 64, as the paper)")
    p.add_argument("--amp-ranks", type=int, nargs=2, default=(4, 64), metavar=("LOW", "HIGH"),
                   help="Table 7's two ranks (default 4 64, as the paper)")
    p.add_argument("--targets", default="qv", help="the runs' lora.targets used for the figures (default qv)")
    a = p.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), p))
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s")
    from harness.report.render import paper_values
    from harness.store import Store

    store = Store(a.root)
    store.sync()
    records = store.records(a.experiment, status="ok")
    if not records:
        known = store.experiments()
        print(f"error: no ok records of experiment {a.experiment!r} in {a.root}; experiments there: {known}",
              file=sys.stderr)
        return 2
    try:
        table7 = paper_values().get("lora_table7")
        result = analyze(records, *a.ranks, amp_ranks=tuple(a.amp_ranks), fig_targets=a.targets,
                         paper=(table7 or {}).get("values"))
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    readme = render(a.experiment, result, records, Path(a.out), table7)
    print(f"wrote {readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
