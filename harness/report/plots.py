"""Seaborn plots of an experiment's runs, each drawn only when the grid varies what it shows.

  rank.png      metric vs rank r per target set (LoRA Table 6), one point per seed and the aggregate line
  targets.png   metric by target set (LoRA Table 5), one dot per seed
  cost.png      peak memory and tokens/s by method (QLoRA Table 3 rows)
  pareto.png    metric vs peak memory per configuration, the Pareto front marked
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from harness.report.frame import pareto_front  # noqa: E402
from harness.report.tables import METHOD_LABELS, METRIC_LABELS, TASK_LABELS, targets_label  # noqa: E402


def _ylabel(df: pd.DataFrame) -> str:
    parts = sorted({f"{TASK_LABELS.get(t, t)} {METRIC_LABELS.get(m, m)}" for t, m in zip(df["task"], df["metric"])})
    return " / ".join(parts) + " (x100)"


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rank_plot(runs: pd.DataFrame, agg: pd.DataFrame, out: Path) -> Path | None:
    a = agg[agg["r"].notna()]
    if a["r"].nunique() < 2:
        return None
    r = runs[(runs["status"] == "ok") & runs["r"].notna()].copy()
    a = a.copy()
    for d in (r, a):
        d["r"] = d["r"].astype(int)
        d["Targets"] = d["targets"].map(targets_label)
        d["Method"] = d["method"].map(lambda m: METHOD_LABELS.get(m, m))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    style = "Method" if a["Method"].nunique() > 1 else None
    sns.lineplot(data=a.sort_values("r"), x="r", y="value", hue="Targets", style=style, markers=True, ax=ax)
    sns.stripplot(data=r, x="r", y="value", hue="Targets", native_scale=True, dodge=False, alpha=0.35, size=4,
                  ax=ax, legend=False)
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(a["r"].unique()), labels=[str(x) for x in sorted(a["r"].unique())])
    ax.set_xlabel("LoRA rank r")
    ax.set_ylabel(_ylabel(a))
    ax.set_title("Metric vs rank per target set (line: aggregate over seeds; dots: seeds)")
    return _save(fig, out / "rank.png")


def targets_plot(runs: pd.DataFrame, agg: pd.DataFrame, out: Path) -> Path | None:
    a = agg[agg["targets"] != "-"]
    if a["targets"].nunique() < 2:
        return None
    r = runs[(runs["status"] == "ok") & (runs["targets"] != "-")].copy()
    order_keys = list(dict.fromkeys(a["targets"]))
    r["Targets"] = r["targets"].map(targets_label)
    r["r"] = r["r"].astype("Int64").astype(str)
    order = [targets_label(t) for t in order_keys]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    hue = "r" if r["r"].nunique() > 1 else None
    sns.pointplot(data=r, x="Targets", y="value", hue=hue, order=order, estimator="median", errorbar=None,
                  linestyle="none", markers="D", ax=ax, dodge=0.3 if hue else False)
    sns.stripplot(data=r, x="Targets", y="value", hue=hue, order=order, alpha=0.35, ax=ax, legend=False,
                  dodge=bool(hue))
    ax.set_xlabel("adapted weight matrices")
    ax.set_ylabel(_ylabel(r))
    ax.set_title("Metric by target set (diamond: median over seeds; dots: seeds)")
    return _save(fig, out / "targets.png")


def cost_plot(agg: pd.DataFrame, out: Path) -> Path | None:
    if agg["method"].nunique() < 2:
        return None
    a = agg.copy()
    a["Method"] = a["method"].map(lambda m: METHOD_LABELS.get(m, m))
    order = list(dict.fromkeys(a["Method"]))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    sns.barplot(data=a, x="Method", y="peak_mb", order=order, ax=axes[0], errorbar=None, color="#4c72b0")
    axes[0].set_ylabel("peak training memory over baseline (MiB)")
    sns.barplot(data=a, x="Method", y="tokens_per_s", order=order, ax=axes[1], errorbar=None, color="#55a868")
    axes[1].set_ylabel("training tokens/s (non-pad)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
        ax.set_xlabel("")
    fig.suptitle("Cost by method (mean over the method's configurations and seeds)")
    return _save(fig, out / "cost.png")


def pareto_plot(agg: pd.DataFrame, out: Path) -> Path | None:
    a = agg.dropna(subset=["peak_mb", "value"]).copy()
    if len(a) < 2:
        return None
    a["Method"] = a["method"].map(lambda m: METHOD_LABELS.get(m, m))
    a["front"] = pareto_front(a)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.scatterplot(data=a, x="peak_mb", y="value", hue="Method", style="Method", s=60, ax=ax)
    f = a[a["front"]].sort_values("peak_mb")
    ax.step(f["peak_mb"], f["value"], where="post", color="black", lw=1, label="Pareto front")
    for _, row in f.iterrows():
        label = row["Method"] + (f" {targets_label(row['targets'])} r={int(row['r'])}" if pd.notna(row["r"]) else "")
        ax.annotate(label, (row["peak_mb"], row["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.legend(fontsize=7)
    ax.set_xlabel("peak training memory over baseline (MiB)")
    ax.set_ylabel(_ylabel(a))
    ax.set_title("Metric vs memory (labelled: configurations on the Pareto front)")
    return _save(fig, out / "pareto.png")


def draw_all(runs: pd.DataFrame, agg: pd.DataFrame, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    trained = agg[agg["trained"].fillna(True).astype(bool)] if "trained" in agg else agg
    made = [rank_plot(runs, agg, out), targets_plot(runs, agg, out)]
    if len(trained) and bool(trained["higher_better"].fillna(True).all()):  # cost and Pareto need training runs
        made += [cost_plot(trained, out), pareto_plot(trained, out)]
    return [p for p in made if p is not None]
