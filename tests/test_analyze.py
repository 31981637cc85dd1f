"""python -m harness.analyze: LoRA section 7 on real saved adapters of tiny runs (the linear algebra itself is
tested on known matrices in test_analysis.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.runner import execute
from tests.conftest import compose, tiny_overrides


@pytest.fixture(scope="module")
def analysed(tiny_bert, tmp_path_factory):
    """Four tiny LoRA runs on Wq,Wv (r=2 and r=8, seeds 1 and 2) of one experiment, and their analysis."""
    from harness.analyze import analyze, render
    from harness.store import Store

    root = tmp_path_factory.mktemp("an")
    for r in (2, 8):
        for seed in (1, 2):
            rec = execute(compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "task.train_size=32",
                                   "task.eval_size=16", "train.batch_size=8", "train.max_steps=4", "train.threads=1",
                                   "train.lr=5e-2", "method=lora", "lora.targets=qv", f"lora.r={r}",
                                   f"train.seed={seed}", "experiment_name=an", f"paths.output_root={root}"]),
                          root / "runs" / f"r{r}_s{seed}")
            assert rec["status"] == "ok" and rec["adapter"]["init"]
    store = Store(root)
    store.sync()
    records = store.records("an", status="ok")
    result = analyze(records, 2, 8, amp_ranks=(2, 8))
    readme = render("an", result, records, root / "reports" / "analysis", None)
    return result, readme, records


def test_the_initial_adapter_is_saved_and_training_moved_a_from_it(analysed):
    from safetensors.numpy import load_file

    result, _, records = analysed
    g = result["groups"][0]
    assert {m["r"] for m in g["movement"]} == {2, 8}
    for m in g["movement"]:
        assert set(m["by_kind"]) == {"q", "v"}
        for v in m["by_kind"].values():
            assert 0 < v["A_moved"] < 10 and v["dW_over_W"] > 0
    run = next(r for r in records if r["config"]["lora"]["r"] == 2)
    init = load_file(f"{run['_dir']}/adapter/adapter_init.safetensors")
    saved = load_file(f"{run['_dir']}/adapter/adapter_model.safetensors")
    a_keys = [k for k in saved if k.endswith("lora_A.weight")]
    assert a_keys and set(a_keys) <= set(init)  # named as the saved adapter names them
    assert all(init[k].shape == saved[k].shape for k in a_keys)
    b_keys = [k for k in saved if k.endswith("lora_B.weight")]
    assert all(not init[k].any() for k in b_keys)  # B starts at zero (peft's default init)


def test_figure3_and_figure4_and_table7_are_measured_with_their_controls(analysed):
    from harness.analysis import similarity_grid

    result, _, records = analysed
    g = result["groups"][0]
    for kind in ("q", "v"):
        f3 = g["fig3"][kind]
        assert f3["seeds"] == [1, 2] and f3["layers"] == 2
        assert np.asarray(f3["mean_grid"]).shape == (2, 8) and np.asarray(f3["mean_grid_init"]).shape == (2, 8)
        assert f3["top_random"] == pytest.approx(8 / 64)
        assert all(0 <= v <= 1 for v in f3["top"].values())
        f4 = g["fig4"][kind]
        assert f4["pairs"] == ["1-2"] and 0 < f4["p_values"]["1-2"] <= 1
        assert np.asarray(f4["random_grid"]).shape == (8, 8)
        for r in (2, 8):
            amp = g["table7"][kind][r]
            assert set(amp) == {1, 2}
            assert all(v["amplification"] > 0 and v["W_on_random"] >= 0 for v in amp.values())
    # the r=2 vs r=8 grid of seed 1, Wq of layer 0, recomputed by hand from the saved files
    from safetensors.numpy import load_file

    def a_of(r):
        rec = next(x for x in records if x["config"]["lora"]["r"] == r and x["config"]["train"]["seed"] == 1)
        saved = load_file(f"{rec['_dir']}/adapter/adapter_model.safetensors")
        return next(v for k, v in saved.items() if ".layer.0." in k and "query.lora_A" in k)

    want = similarity_grid(a_of(2), a_of(8))[0, 7]
    from harness.analyze import pair_grids, read_adapter

    ads = {x["config"]["lora"]["r"]: read_adapter(x) for x in records if x["config"]["train"]["seed"] == 1}
    assert pair_grids(ads[2], ads[8], "q")[0, 0, 7] == pytest.approx(want)


def test_the_report_shows_every_section_and_checks_the_papers_claims(analysed):
    result, readme, _ = analysed
    text = readme.read_text()
    for heading in ("How far training moved", "Figure 3", "Figure 4", "Table 7", "Claims checked"):
        assert heading in text
    claims = result["groups"][0]["claims"]
    sources = {c["source"] for c in claims}
    assert {"LoRA Figure 3, section 7.2", "LoRA Figure 4, section 7.2", "LoRA Table 7, section 7.3"} <= sources
    assert all(c["verdict"] in ("holds", "fails", "not resolved") for c in claims)
    assert (readme.parent / "fig3_mrpc_tiny_lora.png").is_file() and (readme.parent / "fig4_mrpc_tiny_lora.png").is_file()
    summary = json.loads((readme.parent / "summary.json").read_text())
    assert summary["experiment"] == "an" and summary["runs"] == 4
    from harness.report.render import _analyses

    rows, index_claims = _analyses(readme.parent.parent.parent)  # reports/README.md lists them
    assert rows[0][0] == "[analysis/an](analysis/an/README.md)" and rows[0][1] == "4"
    assert len(index_claims) == len(claims) and all("||" not in c[4] for c in index_claims)


def test_a_quantized_decoder_base_is_dequantized_for_w(tiny_llama, tmp_path):
    """Table 7 needs W: from a 4-bit causal LM (the other model family) it is bitsandbytes' dequantized W, close to
    the original weights; Llama's q_proj / v_proj are Wq / Wv."""
    import torch
    from transformers import LlamaModel

    from harness.analyze import base_weights, read_adapter
    from harness.store import Store

    rec = execute(compose([*tiny_overrides(tiny_llama, "llama", "last"), "task=wikisql", "task.train_size=8",
                           "task.eval_size=2", "train.batch_size=4", "train.max_steps=1", "task.max_new_tokens=2",
                           "train.max_seq_len=64", "train.threads=1", "method=qlora_nf4", "method.compute_dtype=fp32",
                           "lora.targets=qv", "lora.r=2", "experiment_name=q", f"paths.output_root={tmp_path}"]),
                  tmp_path / "q")
    assert rec["status"] == "ok"
    store = Store(tmp_path)
    store.sync()
    ad = read_adapter(store.records("q")[0])
    assert {k for k, _ in ad.mats} == {"q", "v"} and {layer for _, layer in ad.mats} == {0, 1}
    ws = base_weights(ad)
    orig = LlamaModel.from_pretrained(tiny_llama).layers[0].self_attn.q_proj.weight.detach()
    w = torch.from_numpy(next(v for k, v in ws.items() if ".layers.0." in k and k.endswith("q_proj")))
    err = float((w.float() - orig).norm() / orig.norm())
    assert 0 < err < 0.2  # 4-bit values, not the original ones, and not garbage


def test_an_experiment_without_adapters_says_so(tmp_path, capsys):
    from harness.analyze import main

    assert main(["--experiment", "nothing", "--root", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no ok records of experiment 'nothing'" in capsys.readouterr().err
