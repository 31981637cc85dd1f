"""python -m harness.eval RUN_DIR: a saved adapter, put back on its base model, re-scores to the recorded metric."""

from __future__ import annotations

import pytest

from harness.runner import execute
from tests.conftest import compose, tiny_overrides


@pytest.fixture(scope="module")
def lora_runs(tiny_bert, tmp_path_factory):
    """Two finished tiny LoRA runs on MRPC, shared by the tests below: a bi-encoder and a cross-encoder (rsLoRA)."""
    root = tmp_path_factory.mktemp("lora_runs")
    out = {}
    for name, extra in (("bi", ["task.pair_encoding=bi", "lora.targets=all_linear", "train.lr=1e-2"]),
                        ("cross", ["task.pair_encoding=cross", "lora.use_rslora=true", "lora.targets=qv"])):
        rec = execute(compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "task.train_size=32",
                               "task.eval_size=24", "train.batch_size=8", "train.max_steps=4", "train.threads=1",
                               "method=lora", f"paths.output_root={root}", *extra]), root / name)
        assert rec["status"] == "ok" and rec["adapter"]["bytes"] > 0
        out[name] = (root / name, rec)
    return out


@pytest.mark.parametrize("kind", ["bi", "cross"])
def test_a_saved_adapter_rescored_gives_the_recorded_final_metric_exactly(lora_runs, kind, capsys):
    from harness.eval import main, reevaluate

    run, rec = lora_runs[kind]
    got = reevaluate(run)
    assert got["validation"] == rec["metrics"]["final"]["validation"]  # every metric, to the last bit
    assert main([str(run)]) == 0
    assert '{"matches": true}' in capsys.readouterr().out


def test_runs_without_saved_weights_say_why(tiny_bert, tmp_path, capsys):
    from harness.eval import main

    cfg = compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "task.train_size=16", "task.eval_size=8",
                   "train.batch_size=8", "train.max_steps=1", "train.threads=1", "method=full",
                   f"paths.output_root={tmp_path}"])
    execute(cfg, tmp_path / "full")
    assert main([str(tmp_path / "full")]) == 2
    assert "no saved adapter" in capsys.readouterr().err
    assert main([str(tmp_path / "nowhere")]) == 2


def _run(tmp_path, name, overrides):
    rec = execute(compose([*overrides, "train.threads=1", f"paths.output_root={tmp_path}"]), tmp_path / name)
    assert rec["status"] == "ok", rec.get("error")
    return tmp_path / name


def test_merge_writes_a_model_transformers_loads_without_peft_and_it_computes_what_the_adapter_did(lora_runs,
                                                                                                   tmp_path):
    import json

    import torch
    from transformers import AutoModel, AutoTokenizer

    from harness.eval import load_run
    from harness.merge import main
    from harness.models import pool_hidden

    run = lora_runs["bi"][0]
    assert main([str(run), str(tmp_path / "merged")]) == 0
    assert main([str(run), str(tmp_path / "merged")]) == 2  # never overwrites
    _, _, adapted, tok, _ = load_run(run)
    merged = AutoModel.from_pretrained(tmp_path / "merged").eval()
    x = AutoTokenizer.from_pretrained(tmp_path / "merged")(["a man plays a guitar", "rain today"], padding=True,
                                                           return_tensors="pt")
    with torch.no_grad():
        want = adapted.eval().get_base_model().encode(x["input_ids"], x["attention_mask"])
        got = pool_hidden(merged(**x).last_hidden_state, x["attention_mask"], "mean")
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, want * 0)
    info = json.loads((tmp_path / "merged" / "harness_head.json").read_text())
    assert info["head"] == "CosineHead" and info["dequantized_layers"] == 0
    assert (tmp_path / "merged" / "head.safetensors").is_file()


def test_merging_a_4bit_run_dequantizes_and_says_so(tiny_llama, tmp_path):
    import json

    import torch
    from transformers import AutoModel

    from harness.eval import load_run
    from harness.merge import merge

    run = _run(tmp_path, "q", [*tiny_overrides(tiny_llama, "llama", "last"), "task=rte", "task.train_size=16",
                               "task.eval_size=8", "train.batch_size=8", "train.max_steps=2", "method=qlora_nf4",
                               "method.compute_dtype=fp32", "train.max_seq_len=32"])
    info = merge(run, tmp_path / "merged")
    assert info["dequantized_layers"] > 0 and "dequantized values" in info["note"]
    assert json.loads((tmp_path / "merged" / "merge.json").read_text())["method"] == "qlora_nf4"
    _, _, adapted, _, _ = load_run(run)
    merged = AutoModel.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        want = adapted.eval().get_base_model().backbone(input_ids=ids).last_hidden_state
        got = merged(input_ids=ids).last_hidden_state
    assert torch.allclose(got, want, atol=1e-4)  # the 4-bit model computes with these same dequantized values


def test_generate_answers_in_the_tasks_template_and_a_merged_causal_lm_gives_the_same_logits(tiny_llama, tmp_path,
                                                                                              capsys):
    import json

    import torch
    from transformers import AutoModelForCausalLM

    from harness.eval import load_run
    from harness.generate import main, render
    from harness.merge import merge

    run = _run(tmp_path, "c", [*tiny_overrides(tiny_llama, "llama", "last"), "task=wikisql", "task.train_size=8",
                               "task.eval_size=2", "train.batch_size=4", "train.max_steps=1",
                               "task.max_new_tokens=4", "train.max_seq_len=64", "method=lora"])
    assert main([str(run), "table: 1-1\ncolumns: a, b\nQ: what is a?\nA:"]) == 0
    row = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert row["prompt"].startswith("table: 1-1") and isinstance(row["answer"], str)
    merge(run, tmp_path / "merged")
    _, _, adapted, _, _ = load_run(run)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    ids = torch.tensor([[101, 2795, 1024, 102]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits, atol=1e-4)
    alpaca = compose(["model=smollm2_135m", "task=alpaca"]).task
    assert render(alpaca, "Name a color.").endswith("### Instruction:\nName a color.\n\n### Response:\n")
    assert "### Input:\nred\n\n" in render(alpaca, "Translate.", "red")


def test_generate_refuses_a_classifier_run(lora_runs, capsys):
    from harness.generate import main

    assert main([str(lora_runs["cross"][0]), "hello"]) == 2 and "is a classifier, not a causal LM" in capsys.readouterr().err


def test_a_4bit_causal_lm_merges_into_a_plain_model(tiny_llama, tmp_path):
    """A causal LM loaded by transformers in 4 bit gets peft's bitsandbytes LoRA wrappers (the SmolLM2 QLoRA path):
    merge dequantizes, merges into plain layers and saves a model that loads without bitsandbytes."""
    import torch
    from transformers import AutoModelForCausalLM

    from harness.eval import load_run
    from harness.merge import merge

    run = _run(tmp_path, "q", [*tiny_overrides(tiny_llama, "llama", "last"), "task=wikisql", "task.train_size=8",
                               "task.eval_size=2", "train.batch_size=4", "train.max_steps=1", "task.max_new_tokens=2",
                               "train.max_seq_len=64", "method=qlora_nf4", "method.compute_dtype=fp32"])
    info = merge(run, tmp_path / "merged")
    assert info["dequantized_layers"] > 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert getattr(merged.config, "quantization_config", None) is None
    _, _, adapted, _, _ = load_run(run)
    ids = torch.tensor([[101, 2795, 1024, 102]])
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, adapted.eval()(input_ids=ids).logits, atol=1e-3)


def test_a_missing_base_model_or_a_mismatched_adapter_is_named_and_nothing_is_written(lora_runs, tmp_path, capsys):
    import json
    import shutil

    from harness.eval import main as eval_main
    from harness.merge import main as merge_main
    from harness.records import RECORD_NAME

    gone = tmp_path / "gone"
    shutil.copytree(lora_runs["cross"][0], gone)
    rec = json.loads((gone / RECORD_NAME).read_text())
    rec["config"]["model"]["source"] = str(tmp_path / "no-such-model")
    (gone / RECORD_NAME).write_text(json.dumps(rec))
    assert eval_main([str(gone)]) == 2
    err = capsys.readouterr().err
    assert "its base model 'tiny'" in err and "no such folder" in err
    assert merge_main([str(gone), str(tmp_path / "m1")]) == 2 and not (tmp_path / "m1").exists()

    swapped = tmp_path / "swapped"  # the cross-encoder's record (Wq,Wv) with the bi-encoder's adapter (all linear)
    shutil.copytree(lora_runs["cross"][0], swapped)
    shutil.copy(lora_runs["bi"][0] / "adapter" / "adapter_model.safetensors", swapped / "adapter")
    assert eval_main([str(swapped)]) == 2
    assert "fit no module of the rebuilt model" in capsys.readouterr().err
    assert merge_main([str(swapped), str(tmp_path / "m2")]) == 2 and not (tmp_path / "m2").exists()
