"""Reports from fixture records: golden tables in the papers' layouts, claim checks, the rendered README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.report import claims, frame, paper_tables
from harness.report.render import paper_values, render_experiment
from tests.conftest import REPO
from tests.records_fixture import make_record

GOLDEN = Path(__file__).parent / "golden"
RANKS = (1, 2, 4, 8, 64)


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text + "\n")
    assert text + "\n" == path.read_text(), f"{name} differs from the golden file (UPDATE_GOLDEN=1 to accept)"


def table6_records(qv_r1: float = 0.705, q_r1: float = 0.40) -> list[dict]:
    base = {"q": {1: q_r1, 2: 0.50, 4: 0.55, 8: 0.56, 64: 0.52},
            "qv": {1: qv_r1, 2: 0.705, 4: 0.71, 8: 0.712, 64: 0.70},
            "qkvo": {1: 0.72, 2: 0.73, 4: 0.735, 8: 0.74, 64: 0.73}}
    return [make_record(experiment="t6", table="lora_table6", aggregate="mean", targets=t, r=r, seed=s,
                        value=v + (0.004 if s == 2 else -0.004), peak_mb=400 + r + 10 * len(t))
            for t, rv in base.items() for r, v in rv.items() for s in (1, 2)]


def agg_of(records, how="median"):
    return frame.aggregate(frame.runs_frame(frame.latest_per_config(records)[0]), how)


def test_aggregate_uses_the_papers_statistic_and_reports_the_spread():
    recs = [make_record(seed=s, value=v) for s, v in zip((1, 2, 3, 4, 5), (0.60, 0.61, 0.70, 0.62, 0.50))]
    med = agg_of(recs, "median").iloc[0]
    mean = agg_of(recs, "mean").iloc[0]
    assert med["value"] == pytest.approx(61.0) and mean["value"] == pytest.approx(60.6)
    assert med["seeds"] == 5 and med["min"] == pytest.approx(50.0) and med["max"] == pytest.approx(70.0)
    assert med["spread"] == pytest.approx(7.1274, abs=1e-3)  # sample std: sqrt(203.2 / 4)


def test_latest_ok_record_wins_and_failed_retries_are_superseded():
    failed = make_record(status="failed", finished_at="2026-11-22T09:00:00")
    ok = make_record(finished_at="2026-11-22T10:00:00")
    other = make_record(seed=9, status="failed")
    chosen, superseded = frame.latest_per_config([failed, ok, other])
    assert {(r["seed"], r["status"]) for r in chosen} == {(1, "ok"), (9, "failed")}
    assert superseded == [failed]


def test_records_of_one_computation_under_two_stored_hashes_count_once():
    """A record written before a key joined the hash's exclusions carries another stored config_hash for the same
    computation (the sanity report once listed 8 seeds for 5): reports key records by the hash as computed now."""
    old = make_record(seed=1, value=0.70, finished_at="2026-11-22T09:00:00")
    new = make_record(seed=1, value=0.70, finished_at="2026-11-22T10:00:00")
    old["config_hash"], new["config_hash"] = "aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"
    other_seed = make_record(seed=2, value=0.72)
    chosen, superseded = frame.latest_per_config([old, new, other_seed])
    assert sorted(r["seed"] for r in chosen) == [1, 2] and superseded == [old]
    assert agg_of([old, new, other_seed]).iloc[0]["seeds"] == 2


def test_lora_table6_golden():
    golden("lora_table6.md", paper_tables.lora_table6.mirror(agg_of(table6_records(), "mean"), paper_values()["lora_table6"]))


def test_lora_table5_golden():
    vals = {"q": 0.60, "k": 0.58, "v": 0.66, "o": 0.65, "qk": 0.63, "qv": 0.69, "qkvo": 0.70}
    ranks = {"q": 8, "k": 8, "v": 8, "o": 8, "qk": 4, "qv": 4, "qkvo": 2}
    recs = [make_record(table="lora_table5", targets=t, r=ranks[t], value=v) for t, v in vals.items()]
    agg = agg_of(recs)
    golden("lora_table5.md", paper_tables.lora_table5.mirror(agg, paper_values()["lora_table5"]))
    found = claims.check("lora_table5", agg)
    assert [c.verdict for c in found] == ["not resolved"] * 2  # one seed, no predictions: the noise is unknown
    # two seeds whose per-seed differences scatter: paired over seeds, Wq,Wv - Wq = +9 +-1, Wq,Wv - Wk = +11 +-1
    two = recs + [make_record(table="lora_table5", targets=t, r=ranks[t], value=v + (0.004 if t == "qv" else -0.006),
                              seed=2) for t, v in vals.items()]
    found = claims.check("lora_table5", agg_of(two))
    assert [c.verdict for c in found] == ["holds", "holds"]
    assert "Wq,Wv − Wq: +9.5 [" in found[1].evidence and "paired over seeds 1,2" in found[1].evidence


def qlora_records():
    methods = {"full": (0.78, 790), "lora": (0.76, 800), "qlora_int8": (0.757, 810), "qlora_fp4": (0.74, 700),
               "qlora_fp4_dq": (0.745, 690), "qlora_nf4": (0.755, 700), "qlora_nf4_dq": (0.758, 690)}
    return [make_record(table="qlora_table3", method=m, targets="all_linear", value=v + 0.002 * s, peak_mb=p,
                        seed=s) for m, (v, p) in methods.items() for s in (1, 2)]


def test_qlora_table3_golden_and_claims():
    agg = agg_of(qlora_records())
    golden("qlora_table3.md", paper_tables.qlora_table3.mirror(agg, paper_values()["qlora_table3"]))
    found = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in claims.check("qlora_table3", agg)}
    every = found["every QLoRA data type matches 16-bit LoRA"]
    assert every.verdict == "fails" and "qlora_fp4 all linear r=8 -2.0" in every.evidence  # FP4 is 2 points down
    assert found["NF4 with double quantization matches 16-bit LoRA"].verdict == "holds"  # -0.2, within 1 point
    assert found["NF4 with double quantization matches full fine-tuning"].verdict == "fails"  # -2.2
    mem = found["every quantized base"]
    assert mem.verdict == "fails" and "qlora_int8 810 MiB" in mem.evidence  # Int8's peak is above LoRA's
    assert mem.source == "QLoRA section 1 and Figure 1"


def test_lora_table2_golden_and_claim():
    vals = {("sst2", "full"): 0.80, ("sst2", "lora"): 0.79, ("stsb", "full"): 0.75, ("stsb", "lora"): 0.76}
    jitter = {1: 0.0, 2: 0.003, 3: -0.002}  # LoRA's seeds move apart from full's: the paired difference has noise
    recs = [make_record(table="lora_table2", task=t, method=m, value=v + 0.01 * s + (jitter[s] if m == "lora" else 0),
                        seed=s) for (t, m), v in vals.items() for s in (1, 2, 3)]
    agg = agg_of(recs)
    golden("lora_table2.md", paper_tables.lora_table2.mirror(agg, paper_values()["lora_table2"]))
    table2 = [c for c in claims.check("lora_table2", agg) if c.table == "lora_table2"]
    (c,) = table2
    # SST-2: LoRA - full per seed -1.0, -0.7, -1.2: mean -0.97, its 90% interval reaches below -1: not resolved
    assert c.verdict == "not resolved" and "sst2: LoRA 81.3 vs full 82.0, LoRA − full -1.0 [-1.6, -0.3]" in c.evidence
    assert c.source == "LoRA Table 2, section 5.3" and c.delta == 1.0


@pytest.mark.parametrize("qv_r1, q_r1, expect", [
    (0.705, 0.40, ["holds", "holds", "holds"]),  # the paper's pattern
    (0.60, 0.56, ["fails", "fails", "holds"]),  # r=1 11 points behind for Wq,Wv; Wq's r=1 gap (0) smaller than Wq,Wv's
])
def test_table6_claims_follow_the_numbers(qv_r1, q_r1, expect):
    recs = table6_records(qv_r1, q_r1)
    for r in recs:  # seed 2 of every r=1 run 0.05 points off the common shift: the paired differences have noise
        if r["config"]["lora"]["r"] == 1 and r["seed"] == 2:
            r["metrics"]["final"]["validation"]["pearson"] += 0.0005
    found = claims.check("lora_table6", agg_of(recs, "mean"))
    assert [c.verdict for c in found] == expect


def test_readme_has_scale_mirror_claims_configs_plots_and_failures(tmp_path):
    recs = table6_records() + [make_record(experiment="t6", table="lora_table6", targets="qv", r=16, seed=1,
                                           status="failed", error="ConfigError: bad things")]
    for i, r in enumerate(recs):
        r["_path"] = f"sweeps/t6/{i}/record.json"
    readme = render_experiment("t6", recs, tmp_path).read_text()
    for part in ("# t6: LoRA (Hu et al. 2021), Table 6", "## Scale we ran at", "| Seeds | 1, 2 (configurations aggregated by mean",
                 "## LoRA (Hu et al. 2021), Table 6 — ours (paper)", "## Claims checked", "— **holds** here.",
                 "## All configurations", "## Which configuration, at what cost", "![rank](rank.png)", "![pareto](pareto.png)", "## Failed runs",
                 "ConfigError: bad things", "| Runs | 1 failed, 30 ok |"):
        assert part in readme, part
    assert {p.name for p in tmp_path.joinpath("t6").glob("*.png")} == {"rank.png", "targets.png", "pareto.png"}


def test_report_cli_reads_the_store_without_importing_torch(tmp_path):
    from harness.records import write_json_atomic

    for i, r in enumerate(qlora_records()):
        write_json_atomic(tmp_path / "out" / "sweeps" / "q" / str(i) / "record.json", r)
    bad = tmp_path / "out" / "sweeps" / "q" / "broken" / "record.json"
    bad.parent.mkdir(parents=True)
    bad.write_text("{not json")
    poison = tmp_path / "poison"
    (poison / "torch").mkdir(parents=True)
    (poison / "torch" / "__init__.py").write_text("raise ImportError('reports must not import torch')\n")
    env = {**os.environ, "PYTHONPATH": f"{poison}{os.pathsep}{REPO}"}
    p = subprocess.run([sys.executable, "-m", "harness.report", f"root={tmp_path / 'out'}",
                        f"out={tmp_path / 'reports'}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"skipped unreadable record {bad}" in p.stdout
    readme = (tmp_path / "reports" / "exp" / "README.md").read_text()
    assert "QLoRA (Dettmers et al. 2023), Table 3 — ours (paper)" in readme
    assert (tmp_path / "reports" / "exp" / "cost.png").stat().st_size > 1000
    index = (tmp_path / "reports" / "README.md").read_text()
    assert "| [exp](exp/README.md) | QLoRA (Dettmers et al. 2023), Table 3 | local | 14 ok | 1 hold, 6 fail, 0 not resolved |" in index, index
    assert "## Every paper claim checked" in index and "| QLoRA section 1 and Figure 1 |" in index
    summary = json.loads((tmp_path / "reports" / "exp" / "summary.json").read_text())
    nf4 = next(c for c in summary["claims"] if c["claim"].startswith("stsb/minilm_l6: NF4 with double quantization "
                                                                      "matches 16-bit LoRA"))
    assert nf4["verdict"] == "holds" and nf4["n"] == 2 and nf4["difference"] == pytest.approx(-0.2)
    assert {c["method"] for c in summary["configurations"]} == {"full", "lora", "qlora_int8", "qlora_fp4",
                                                                "qlora_fp4_dq", "qlora_nf4", "qlora_nf4_dq"}


def test_a_difference_inside_seed_noise_is_not_resolved():
    # Wq,Wv r=1 is 2 points below r=8 on average, but the per-seed differences are -12 and +8: paired t over 2
    # seeds (multiplier 12.7) gives an interval of about +-127 points, so nothing is resolved
    recs = [make_record(table="lora_table6", targets="qv", r=r, seed=s,
                        value=v + (0.05 if (s == 1) == (r == 8) else -0.05)) for r, v in ((1, 0.68), (8, 0.70))
            for s in (1, 2)]
    (c,) = claims.check("lora_table6", agg_of(recs, "mean"))
    assert c.verdict == "not resolved" and "**not resolved**" in c.markdown()
    assert "r=1 − r=8 (70.0): -2.0 [" in c.evidence and "paired over seeds 1,2" in c.evidence
    # with one seed and no saved predictions the same gap is not resolved either: the noise is unknown
    (c1,) = claims.check("lora_table6", agg_of([r for r in recs if r["seed"] == 1], "mean"))
    assert c1.verdict == "not resolved" and "noise unknown" in c1.evidence


def test_one_seed_is_compared_by_a_paired_bootstrap_over_saved_predictions(tmp_path):
    """Two one-seed runs on the same 100 examples: 3 questions apart is not resolved, 30 apart holds."""
    import numpy as np

    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 100)
    recs = []
    for r, wrong in ((1, 40), (8, 37), (64, 10)):
        pred = gold.copy()
        pred[:wrong] = 1 - pred[:wrong]
        d = tmp_path / f"r{r}"
        (d / "predictions").mkdir(parents=True)
        (d / "predictions" / "validation.jsonl").write_text("".join(
            json.dumps({"i": i, "pred": int(p), "gold": int(g)}) + "\n" for i, (p, g) in enumerate(zip(pred, gold))))
        rec = make_record(table="lora_table6", task="mrpc", targets="qv", r=r, value=(100 - wrong) / 100)
        rec["_dir"] = str(d)
        recs.append(rec)
    agg = agg_of(recs[:2], "mean")
    (c,) = claims.check("lora_table6", agg)
    # r=1 3 of 100 questions behind: the bootstrap interval reaches both below and above the 1-point margin
    assert c.verdict == "not resolved" and "bootstrap over 100 examples" in c.evidence
    (c,) = claims.check("lora_table6", agg_of([recs[0], recs[2]], "mean"))
    assert c.verdict == "fails" and "r=1 − r=64 (90.0): -30.0 [" in c.evidence

    # three ranks: r=1 against each other rank, each part's fail side at the Bonferroni level
    (c,) = claims.check("lora_table6", agg_of(recs, "mean"))
    assert "r=1 − r=8 (63.0)" in c.evidence and "r=1 − r=64 (90.0)" in c.evidence and "5%/2" in c.evidence
    assert c.verdict == "fails"

def _storage(bits: float, blocks: float) -> dict:
    return {"model": {"linear_storage": {"bits_per_param": bits, "bits_per_param_blocks": blocks,
                                         "weight_bytes": 1000, "constant_bytes": 10}},
            "method": {"name": "x", "compute_dtype": "bfloat16", "lr": 0.0, "trained": False, "lora": None}}


def test_qlora_table2_mirror_and_claims_for_perplexity(tmp_path):
    """Evaluation-only records, lower is better: NF4 beats FP4, DQ saves 0.373 bits, no 'best configuration'."""
    spec = {"full": (5.47, 32.0, 32.0), "qlora_fp4": (7.78, 4.5, 4.5), "qlora_fp4_dq": (7.75, 4.143, 4.127),
            "qlora_nf4": (6.78, 4.5, 4.5), "qlora_nf4_dq": (6.77, 4.143, 4.127)}
    recs = [make_record(experiment="qlora_table2", task="alpaca", model="smollm2_135m", method=m, targets="all_linear",
                        value=v, table="qlora_table2", aggregate="mean", extra=_storage(b, bb))
            for m, (v, b, bb) in spec.items()]
    agg = frame.aggregate(frame.runs_frame(recs), "mean")
    assert find_value(agg, "qlora_nf4") == 6.78  # perplexity is not put on the x100 scale
    md = paper_tables.qlora_table2.mirror(agg, paper_values()["qlora_table2"])
    assert "| NFloat4 + DQ | Alpaca perplexity, smollm2_135m | 6.77 | +1.30 | – | 4.143 |" in md and "| 27.41 |" in md
    found = claims.check("qlora_table2", agg)

    def verdict(start):
        return next(c.holds for c in found if c.claim.split(": ", 1)[1].startswith(start))

    # NF4 is lower, but perplexity saves no per-answer losses: no interval, so no verdict
    assert verdict("NF4 beats FP4 (E2M1) (has lower perplexity") is None
    assert verdict("with double quantization too, NF4 beats FP4") is None
    assert verdict("double quantization saves 0.373 bits") is True
    readme = render_experiment("qlora_table2", recs, tmp_path, plots=False).read_text()
    assert "## Which configuration" not in readme


def test_qlora_table2_perplexity_bootstraps_over_answers_when_their_losses_are_saved(tmp_path):
    """Each answer's NLL sum and token count saved: perplexity on any resample is exp(sum NLL / sum tokens); NF4 far
    below FP4 holds, and the table shows each interval and the paired difference from fp32."""
    import math

    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(5, 40, 200)
    base = rng.gamma(4.0, 0.5, 200)  # per-token NLL of each answer under fp32
    per_token = {"full": base, "qlora_nf4": base + 0.2, "qlora_nf4_dq": base + 0.2 + rng.normal(0, 0.01, 200),
                 "qlora_fp4": base + 0.4 + rng.normal(0, 0.05, 200)}
    recs = []
    for m, nll in per_token.items():
        d = tmp_path / m
        (d / "predictions").mkdir(parents=True)
        (d / "predictions" / "validation.jsonl").write_text("".join(
            json.dumps({"i": i, "gold": f"answer {i}", "nll": float(x * k), "tokens": int(k)}) + "\n"
            for i, (x, k) in enumerate(zip(nll, tokens))))
        ppl = math.exp(float((nll * tokens).sum() / tokens.sum()))
        r = make_record(experiment="qlora_table2", task="alpaca", model="smollm2_135m", method=m,
                        targets="all_linear", value=ppl, table="qlora_table2", aggregate="mean")
        r["_dir"] = str(d)
        recs.append(r)
    agg = agg_of(recs, "mean")
    found = claims.check("qlora_table2", agg)

    def claim(start):
        return next(c for c in found if c.claim.split(": ", 1)[1].startswith(start))

    c = claim("NF4 beats FP4 (E2M1) (has lower perplexity")
    assert c.holds is True and "bootstrap over 200 examples" in c.evidence
    # the full-sample value of the bootstrapped difference is exactly FP4's perplexity minus NF4's
    def ppl(m):
        return float(agg.loc[agg["method"] == m, "value"].iloc[0])

    assert c.diff.mean == pytest.approx(ppl("qlora_fp4") - ppl("qlora_nf4"), rel=1e-9)
    md = paper_tables.qlora_table2.mirror(agg, paper_values()["qlora_table2"])
    row = next(line for line in md.splitlines() if line.startswith("| NFloat4 + DQ |"))
    cells = [x.strip() for x in row.split("|")]
    assert cells[3].startswith(f"{ppl('qlora_nf4_dq'):.2f} [") and cells[4].startswith("+") and "[" in cells[4]


def test_qlora_table2_on_a_regressor_bootstraps_over_examples_and_checks_the_simulated_types(tmp_path):
    """Higher is better (STS-B Pearson): each type's value has a bootstrap interval over the eval pairs, its
    difference from fp32 a paired one; a type beats another only when that interval excludes 0."""
    import numpy as np

    rng = np.random.default_rng(0)
    gold = rng.uniform(0, 5, 400)
    noise = {"full": 0.5, "qlora_nf4": 0.6, "fake_nf4": 0.6, "qlora_fp4": 1.2, "fake_fp4_e3m0": 0.61, "fake_int4": 3.0}
    base = rng.normal(0, 1, 400)
    recs = []
    for m, sd in noise.items():
        d = tmp_path / m
        (d / "predictions").mkdir(parents=True)
        pred = gold + sd * base + (0.01 * rng.normal(0, 1, 400) if m == "fake_nf4" else 0)
        (d / "predictions" / "validation.jsonl").write_text("".join(
            json.dumps({"i": i, "pred": float(p), "gold": float(g)}) + "\n" for i, (p, g) in enumerate(zip(pred, gold))))
        r = make_record(experiment="q2m", task="stsb", method=m, targets="all_linear", table="qlora_table2",
                        aggregate="mean", value=float(np.corrcoef(pred, gold)[0, 1]))
        r["_dir"] = str(d)
        if m.startswith("fake_"):
            r["model"] = {"fake_quant": {"type": m[5:], "rel_error_mean": 0.1 if m != "fake_int4" else 0.2}}
        recs.append(r)
    agg = agg_of(recs, "mean")
    md = paper_tables.qlora_table2.mirror(agg, paper_values()["qlora_table2"])
    row = next(line for line in md.splitlines() if line.startswith("| Int4 (simulated)"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[2].count("[") == 1 and cells[3].startswith("-") and cells[4] == "20.0%" and cells[-1] == "34.34"
    found = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in claims.check("qlora_table2", agg)}
    assert found["NF4 beats Int4"].verdict == "holds" and "bootstrap over 400 examples" in found["NF4 beats Int4"].evidence
    assert found["NF4 beats FP4"].verdict == "holds"
    assert found["FP4 E3M0 beats FP4 E2M1"].verdict == "holds"
    assert found["the torch simulation of NF4 scores as bitsandbytes' own"].verdict == "holds"


def find_value(agg, method):
    return round(float(agg.loc[agg["method"] == method, "value"].iloc[0]), 2)


def test_qlora_table4_mirror_and_claims_from_mmlu_before_and_after():
    recs = []
    for m, after in (("lora_bf16", (0.30, 0.32)), ("qlora_nf4_dq", (0.305, 0.315)), ("qlora_fp4", (0.27, 0.28))):
        for seed, a in zip((1, 2), after):
            recs.append(make_record(experiment="qlora_table4", task="alpaca", model="smollm2_135m", method=m,
                                    targets="all_linear", seed=seed, value=8.0, table="qlora_table4",
                                    aggregate="mean", extra={"mmlu_before": {"accuracy": 0.25},
                                                             "mmlu_after": {"accuracy": a}}))
    agg = frame.aggregate(frame.runs_frame(recs), "mean")
    md = paper_tables.qlora_table4.mirror(agg, paper_values()["qlora_table4"])
    # no saved answers here: no interval over questions, the seeds' spread only
    assert "| BFloat16 | Alpaca, smollm2_135m | 25.0 | 31.0 ±1.4 over seeds | +6.0 | 8.00 | 38.4 | 53.0 |" in md
    got = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in claims.check("qlora_table4", agg)}
    # NF4+DQ - BF16 per seed: +0.5, -0.5: mean 0, but 2 seeds (t multiplier 6.3 at 90%) leave +-3.2: not resolved
    assert got["MMLU after tuning on an NF4+DQ base matches a BF16 base"].verdict == "not resolved"
    # BF16 - FP4 per seed: +3, +4 -> 3.5 [-2.9, 9.9]: not resolved with 2 seeds
    assert got["FP4 trails BF16"].verdict == "not resolved" and "paired over seeds 1,2" in got["FP4 trails BF16"].evidence


def test_qlora_table4_orders_the_data_types_by_held_out_perplexity_after_tuning():
    """Lower perplexity is better: FP4 trails BF16 when its perplexity is higher beyond the seed noise (paired over
    seeds); NF4+DQ beats FP4 when lower; a reversed ordering fails."""
    def check(ppl: dict) -> dict:
        recs = [make_record(experiment="qlora_table4", task="alpaca", model="smollm2_135m", method=m,
                            targets="all_linear", seed=seed, value=v, table="qlora_table4", aggregate="mean")
                for m, vals in ppl.items() for seed, v in zip((1, 2), vals)]
        agg = frame.aggregate(frame.runs_frame(recs), "mean")
        return {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in claims.check("qlora_table4", agg)}

    got = check({"lora_bf16": (4.63, 4.64), "qlora_nf4_dq": (4.80, 4.82), "qlora_fp4": (5.00, 5.03)})
    fp4 = got["after tuning, FP4 trails BF16"]
    # FP4 - BF16 per seed +0.37, +0.39: mean +0.38, SE 0.01, t(1) 12.71 -> [+0.253, +0.507]
    assert fp4.verdict == "holds" and "FP4 − BF16 +0.380 [+0.253, +0.507]" in fp4.evidence
    assert got["after tuning, NF4+DQ beats FP4"].verdict == "holds"
    got = check({"lora_bf16": (4.63, 4.64), "qlora_nf4_dq": (5.20, 5.22), "qlora_fp4": (5.00, 5.03)})
    assert got["after tuning, NF4+DQ beats FP4"].verdict == "fails"


def test_qlora_table4_intervals_over_the_questions_a_run_answered(tmp_path):
    """One seed per data type: MMLU after tuning gets the sampling error of its questions (a bootstrap over the
    per-question answers each run saved), the change from before is paired by question, and the claims compare
    two data types by a paired bootstrap over the same questions."""
    import json

    import numpy as np

    from harness.metrics import mmlu
    from harness.report.examples import load, runs_bootstrap, scorer

    rng = np.random.default_rng(0)
    subjects = [f"s{i % 57}" for i in range(285)]  # 5 questions in each of 57 subjects
    gold = rng.integers(0, 4, 285)
    letters = "ABCD"

    def answers(p_right):
        right = rng.random(285) < p_right
        return np.where(right, gold, (gold + 1) % 4)

    recs, kept = [], {}
    def write(d, key, p_right):
        pred = answers(p_right)
        rows = [{"i": i, "subject": s, "pred": letters[int(a)], "gold": letters[int(g)]}
                for i, (s, a, g) in enumerate(zip(subjects, pred, gold))]
        (d / "predictions" / f"{key}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return mmlu.score(np.eye(4)[pred], list(gold), subjects)["accuracy"]

    for m, before, after in (("lora_bf16", 0.25, 0.55), ("qlora_nf4_dq", 0.25, 0.54), ("qlora_fp4", 0.25, 0.40)):
        d = tmp_path / m
        (d / "predictions").mkdir(parents=True)
        acc = {key: write(d, key, p_right) for key, p_right in (("mmlu_before", before), ("mmlu_after", after))}
        kept[m] = (d, acc)
        rec = make_record(experiment="qlora_table4", task="alpaca", model="smollm2_135m", method=m,
                          targets="all_linear", seed=1, value=8.0, table="qlora_table4", aggregate="mean",
                          extra={"mmlu_before": {"accuracy": acc["mmlu_before"]},
                                 "mmlu_after": {"accuracy": acc["mmlu_after"]}, "_dir": str(d)})
        recs.append(rec)
    # the bootstrap's metric on every question is the run's own MMLU score (the mean over subjects)
    d, acc = kept["qlora_fp4"]
    p = load({"_dir": str(d)}, "mmlu_after")
    assert scorer("mmlu_accuracy", p)(np.arange(285)) == pytest.approx(acc["mmlu_after"])
    agg = frame.aggregate(frame.runs_frame(recs), "mean")
    md = paper_tables.qlora_table4.mirror(agg, paper_values()["qlora_table4"])
    row = next(line for line in md.splitlines() if line.startswith("| Float4 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    after = runs_bootstrap([({"_dir": str(d)}, "mmlu_after")], [], "mmlu_accuracy")
    change = runs_bootstrap([({"_dir": str(d)}, "mmlu_after")], [({"_dir": str(d)}, "mmlu_before")], "mmlu_accuracy")
    lo, hi = after.interval()
    assert cells[3] == f"{100 * acc['mmlu_after']:.1f} [{lo:.1f}, {hi:.1f}]"
    assert 8 < hi - lo < 16  # 285 questions: about +-5.5 points either side at 40%
    clo, chi = change.interval()
    assert change.mean == pytest.approx(100 * (acc["mmlu_after"] - acc["mmlu_before"]))
    assert cells[4] == f"{change.mean:+.1f} [{clo:+.1f}, {chi:+.1f}]"
    got = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in claims.check("qlora_table4", agg)}
    fp4 = got["FP4 trails BF16"]
    assert "bootstrap over 285 examples" in fp4.evidence and fp4.verdict == "holds"  # 55% against 40%
    nf4 = got["MMLU after tuning on an NF4+DQ base matches a BF16 base"]
    assert "bootstrap over 285 examples" in nf4.evidence and nf4.verdict != "holds"  # +-1 point: 285 are too few
    # chance on the same questions, scored as the runs are: uniform guessing, and always the most frequent gold letter
    counts = {c: 0.0 for c in letters}
    for c in letters:
        hits = (np.asarray([letters[int(g)] for g in gold]) == c).astype(float)
        counts[c] = 100 * np.mean([hits[[i for i, s in enumerate(subjects) if s == x]].mean() for x in set(subjects)])
    top = max(counts, key=counts.get)
    assert f'uniform guessing 25.0; always answering "{top}", the most frequent correct letter, {counts[top]:.1f}.' in md
    # a data type whose MMLU after reaches chance is not evidence: its claim is not resolved, whatever the difference
    recs[2]["mmlu_after"] = {"accuracy": write(kept["qlora_fp4"][0], "mmlu_after", 0.25)}
    agg = frame.aggregate(frame.runs_frame(recs), "mean")
    fp4 = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in claims.check("qlora_table4", agg)}["FP4 trails BF16"]
    assert fp4.verdict == "not resolved" and "Not evidence: MMLU after of FP4" in fp4.evidence
    assert f"reaches chance ({counts[top]:.1f}" in fp4.evidence


def test_the_reproduce_line_names_configs_that_exist():
    from harness.report.render import reproduce

    assert reproduce("lora_table2").startswith("Reproduce: `make sweep EXPERIMENT=lora_table2`")
    assert reproduce("sanity") == ("Reproduce: `python -m harness.run -m +experiment=sanity` and "
                                   "`python -m harness.run -m +experiment=sanity_wikisql`.")
    assert reproduce("confirm/mrpc_minilm") == "Reproduce: `make search SEARCH=mrpc_minilm ARGS=--confirm`."
    adhoc = reproduce("my_quick_try")
    assert "no config in conf/experiment/ sets experiment_name=my_quick_try" in adhoc and "overrides.yaml" in adhoc


def test_lora_table3_e2e_golden_every_metric_and_claim():
    """Every E2E metric per method (BLEU, METEOR, ROUGE-L x100; NIST, CIDEr as they are), the paper's GPT-2 M row
    beside, and the claim on the headline BLEU paired by seed."""
    bleu = {"zero_shot": 0.20, "full": 0.60, "lora": 0.595, "qlora_nf4_dq": 0.58}
    jitter = {1: 0.0, 2: 0.004, 3: -0.003}
    recs = []
    for m, b in bleu.items():
        for s in (1, 2, 3):
            v = b + 0.01 * s + (jitter[s] if m == "lora" else 0)
            rec = make_record(experiment="t3", table="lora_table3", task="e2e", model="smollm2_135m", method=m,
                              targets="qv", r=4, alpha=32, seed=s, value=v)
            rec["metrics"]["final"]["validation"].update({"nist": 8 * v / 0.6, "meteor": v * 0.7,
                                                          "rouge_l_coco": v + 0.1, "cider": 3.5 * v})
            if m == "zero_shot":  # the base model, as harness.run records it
                rec["config"]["method"].update(adapter=False, baseline="zero_shot")
                rec["method"]["lora"], rec["params"]["trainable"] = None, 0
            recs.append(rec)
    agg = agg_of(recs)
    golden("lora_table3.md", paper_tables.lora_table3.mirror(agg, paper_values()["lora_table3"]))
    (c,) = [c for c in claims.check("lora_table3", agg) if c.table == "lora_table3"]
    # LoRA - full per seed -0.5, -0.1, -0.8 BLEU: within 1 point on average, but the interval reaches below -1
    assert c.verdict == "not resolved" and "LoRA − full -0.5" in c.evidence and c.source == "LoRA Table 3, section 5.4"
    row = agg[agg["method"] == "full"].iloc[0]
    assert row["metric_values"]["nist"] == pytest.approx({1: 8 * 0.61 / 0.6, 2: 8 * 0.62 / 0.6, 3: 8 * 0.63 / 0.6})
    assert "| smollm2_135m Zero-shot | 0 (–) | 3 | 22.0 [21.0–23.0] |" in paper_tables.lora_table3.mirror(agg, paper_values()["lora_table3"])


def test_qlora_fig2_fig4_claims_compare_placements_ranks_and_full_finetuning():
    """All linear matches full (within 1 point) while Wq,Wv falls short: 'needed' holds; r=64 vs r=8 within noise
    of each other and inside the margin: rank matters little."""
    vals = {("full", "-", 0): 0.780, ("qlora_nf4_dq", "qv", 8): 0.750, ("qlora_nf4_dq", "qv", 64): 0.752,
            ("qlora_nf4_dq", "all_linear", 8): 0.779, ("qlora_nf4_dq", "all_linear", 64): 0.781}
    jitter = {1: 0.0, 2: 0.002, 3: -0.001}
    recs = []
    for (m, t, r), v in vals.items():
        for s in (1, 2, 3):
            recs.append(make_record(experiment="f24", table="qlora_fig2_fig4", task="mrpc", method=m,
                                    targets=t if m != "full" else "qv", r=r or 8, alpha=2 * (r or 8), seed=s,
                                    value=v + 0.01 * s + (jitter[s] if t == "all_linear" else 0)))
    found = {c.claim.split(": ", 1)[1].split(" (")[0]: c for c in claims.check("qlora_fig2_fig4", agg_of(recs))}
    needed = found["LoRA on all linear layers is needed to match full fine-tuning"]
    assert needed.verdict == "holds" and "all linear (r=64) − full" in needed.evidence
    assert found["LoRA on all linear layers beats Wq,Wv only, at every rank"].verdict == "holds"
    rank = found["with all linear layers adapted, rank matters little"]
    assert rank.verdict == "holds" and rank.source == "QLoRA Figure 4, section 4"


def test_the_index_keeps_reports_committed_from_other_stores(tmp_path):
    """Reports whose records live elsewhere (committed from another machine's runs) stay listed while their folder
    exists: experiments, nested reports (confirm/...) and searches; a folder that is gone drops out."""
    from harness.report.render import write_index
    from harness.store import Store

    out = tmp_path / "reports"
    for name in ("t3", "confirm/s", "search/s"):
        (out / name).mkdir(parents=True)
        (out / name / "README.md").write_text("# x\n")
    (out / "README.md").write_text("\n".join([
        "| Experiment | Mirrors | Scale | Runs | Paper claims here |", "| :--- | :--- | :--- | :--- | :--- |",
        "| [t3](t3/README.md) | – | local | 2 ok | – |", "| [confirm/s](confirm/s/README.md) | – | local | 3 ok | – |",
        "| [gone](gone/README.md) | – | local | 1 ok | – |", "",
        "| Study | Trial records |", "| :--- | ---: |", "| [s](search/s/README.md) | 10 |",
        "| [old](search/old/README.md) | 4 |", ""]))
    index = write_index(Store(tmp_path / "empty"), out).read_text()
    assert "| [t3](t3/README.md) | – | local | 2 ok | – |" in index
    assert "| [confirm/s](confirm/s/README.md) | – | local | 3 ok | – |" in index
    assert "| [s](search/s/README.md) | 10 |" in index
    assert "gone" not in index and "search/old" not in index


def test_a_store_without_sanity_runs_gates_claims_on_the_committed_sanity_verdicts(tmp_path):
    """A fresh clone regenerating a report has no sanity runs in its store: the committed reports/sanity/summary.json
    still decides which tasks claims may rest on, and the report says where the verdicts came from."""
    from harness.report.render import CommittedVerdicts, committed_usable

    assert committed_usable(tmp_path) is None
    (tmp_path / "sanity").mkdir()
    (tmp_path / "sanity" / "summary.json").write_text(json.dumps({"tasks": {
        "mrpc/minilm_l6": {"task": "mrpc", "model": "minilm_l6", "pair_encoding": "bi", "usable_for_claims": True},
        "wikisql/smollm2_135m": {"task": "wikisql", "model": "smollm2_135m", "pair_encoding": None,
                                 "usable_for_claims": False}}}))
    usable = committed_usable(tmp_path)
    assert isinstance(usable, CommittedVerdicts)
    assert usable == {"mrpc/minilm_l6/bi": True, "wikisql/smollm2_135m/-": False}
    recs = [make_record(table="lora_table6", task="wikisql", model="smollm2_135m", targets="qv", r=r, value=v,
                        experiment="t6w") for r, v in ((1, 0.30), (8, 0.31))]
    readme = render_experiment("t6w", recs, tmp_path / "out", plots=False, usable=usable).read_text()
    assert "read from the committed reports/sanity/summary.json" in readme
    assert "Not evidence: wikisql/smollm2_135m is not usable for claims" in readme


def test_a_perplexity_is_compared_with_its_baseline_the_lower_the_better(tmp_path):
    """Lower is better: the best baseline is the lowest perplexity, a lower perplexity is above it (clearly, when
    the paired seed interval of baseline minus ours lies above 0), a higher one is below it and not evidence."""
    from harness.report.render import baselined

    recs = [make_record(experiment="e", task="alpaca", model="smollm2_135m", method="zero_shot", seed=s, value=5.57)
            for s in (1, 2, 3)]
    for r in recs:  # the zero-shot baseline (method.baseline)
        r["config"]["method"]["baseline"] = "zero_shot"
    recs += [make_record(experiment="e", task="alpaca", model="smollm2_135m", method="lora", seed=s, value=v)
             for s, v in ((1, 4.70), (2, 4.68), (3, 4.73))]
    recs += [make_record(experiment="e", task="alpaca", model="smollm2_135m", method="lora", targets="q", seed=s,
                         value=v) for s, v in ((1, 5.60), (2, 5.70), (3, 5.65))]
    agg, _ = baselined(recs, frame.runs_frame(recs), "mean")
    by = {t: r for t, r in zip(agg["targets"], agg.to_dict("records")) if r["method"] == "lora"}
    assert by["qv"]["baseline_value"] == pytest.approx(5.57) and by["qv"]["vs_baseline"] == frame.CLEAR
    assert by["qv"]["vs_baseline_diff"].startswith("-0.9")  # ours minus the baseline, as shown
    assert by["q"]["vs_baseline"] == frame.BELOW and by["q"]["seeds_below"] == 3
    assert set(frame.evidence(agg)["targets"]) >= {"qv"} and "q" not in set(frame.evidence(agg)["targets"])


def test_the_scale_table_counts_what_fine_tunes_not_its_zero_shot_baseline():
    """The Data row gives the fine-tuned runs' training set size (a zero-shot baseline records 0 training
    examples); a trainable count that is the same in every run prints once, not as a range."""
    from harness.report.render import scale_table

    recs = [make_record(experiment="e", task="alpaca", model="smollm2_135m", method="lora", targets="all_linear",
                        r=16, seed=s, value=4.7, train_examples=899) for s in (1, 2)]
    base = make_record(experiment="e", task="alpaca", model="smollm2_135m", method="zero_shot", seed=1, value=5.57,
                       train_examples=0)
    base["config"]["method"]["baseline"] = "zero_shot"
    recs.append(base)
    md = scale_table(recs, frame.runs_frame(recs), None)
    data = next(line for line in md.splitlines() if line.startswith("| Data"))
    assert "Alpaca: 899 train / 1500 eval examples" in data and "0," not in data
    trainable = next(line for line in md.splitlines() if line.startswith("| Trainable parameters"))
    assert "–" not in trainable and "% of the model" in trainable
    wall = next(line for line in md.splitlines() if line.startswith("| Wall time"))
    assert "2.2 min over 3 runs" in wall and "longest run 0.8 min" in wall  # make_record: 45 s a run
