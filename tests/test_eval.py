"""python -m harness.eval RUN_DIR: a saved adapter, put back on its base model, re-scores to the recorded metric."""

from __future__ import annotations

import pytest

from harness.run import execute
from tests.conftest import compose, tiny_overrides


@pytest.mark.parametrize("extra", [["task.pair_encoding=bi"], ["task.pair_encoding=cross", "lora.use_rslora=true"]],
                         ids=["bi-encoder", "cross-encoder"])
def test_a_saved_adapter_rescored_gives_the_recorded_final_metric_exactly(tiny_bert, tmp_path, extra, capsys):
    from harness.eval import main, reevaluate

    cfg = compose([*tiny_overrides(tiny_bert, "bert", "mean"), "task=mrpc", "task.train_size=32",
                   "task.eval_size=24", "train.batch_size=8", "train.max_steps=4", "train.threads=1",
                   "method=lora", "lora.targets=qv", f"paths.output_root={tmp_path}", *extra])
    rec = execute(cfg, tmp_path / "run")
    assert rec["status"] == "ok" and rec["adapter"]["bytes"] > 0
    got = reevaluate(tmp_path / "run")
    assert got["validation"] == rec["metrics"]["final"]["validation"]  # every metric, to the last bit
    assert main([str(tmp_path / "run")]) == 0
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
