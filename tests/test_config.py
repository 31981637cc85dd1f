"""Bad input fails with a clear message, before any model loads; the CLI's --cfg/--help load nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf.errors import ConfigKeyError, ValidationError

from harness.config import ConfigError
from harness.runner import execute
from tests.conftest import CONF, REPO, compose


@pytest.mark.parametrize("group,bad,valid", [
    ("method", "qlora_nf5", ["bitfit", "fake_int4", "fake_fp4_e3m0", "full", "head_only", "lora", "lora_bf16",
                             "majority", "qlora_int8", "qlora_fp4", "qlora_fp4_dq", "qlora_nf4", "qlora_nf4_dq",
                             "zero_shot"]),
    ("task", "sst3", ["cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb"]),
    ("model", "bert_huge", ["minilm_l6", "smollm2_135m", "roberta_base", "llama2_7b"]),
])
def test_unknown_group_option_lists_valid_choices(group, bad, valid):
    with pytest.raises(MissingConfigException) as e:
        compose([f"{group}={bad}"])
    msg = str(e.value)
    assert f"{group}/{bad}" in msg
    for v in valid:
        assert f"\t{v}\n" in msg + "\n", v


def test_unknown_key_and_wrong_type_fail_at_compose():
    with pytest.raises(ConfigCompositionException) as e:
        compose(["train.lrr=3"])
    assert "lrr" in str(e.value.__cause__) or "lrr" in str(e.value)
    with pytest.raises(ConfigCompositionException) as e:
        compose(["train.lr=fast"])
    assert isinstance(e.value.__cause__, ValidationError)
    with pytest.raises(ConfigCompositionException) as e:
        compose(["method.quant=int3"])
    assert "int3" in str(e.value.__cause__) and "nf4" in str(e.value.__cause__)


def test_schema_rejects_unknown_key_in_a_group_file(tmp_path):
    from omegaconf import OmegaConf

    from harness.config import MethodConfig

    with pytest.raises(ConfigKeyError, match="bogus"):
        OmegaConf.merge(OmegaConf.structured(MethodConfig), {"name": "x", "bogus": 1})


@pytest.mark.parametrize("override,message", [
    ("lora.targets=qz", "lora.targets='qz' is not valid"),
    ("lora.targets=qq", "lora.targets='qq' is not valid"),
    ("lora.r=0", "lora.r=0 is out of range"),
    ("lora.r=-4", "lora.r=-4 is out of range"),
    ("lora.alpha=0", "lora.alpha=0.0 is out of range"),
    ("lora.dropout=1.5", "lora.dropout=1.5 is out of range"),
    ("train.lr=0", "train.lr=0.0 is out of range"),
    ("train.batch_size=0", "train.batch_size=0 is out of range"),
    ("train.max_seq_len=100000", "exceeds model 'minilm_l6'"),
    ("lora.rank_budget=9 lora.targets=qv", "not divisible"),
    ("model.attn_implementation=eagr", "model.attn_implementation='eagr' is not valid; valid: null"),
])
def test_bad_values_fail_before_any_model_loads(tmp_path, override, message):
    cfg = compose(override.split())
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        execute(cfg, tmp_path)
    rec = json.loads((tmp_path / "record.json").read_text())
    assert rec["status"] == "failed" and message.split(" ")[0] in rec["error"]
    assert "params" not in rec and "model" not in rec  # nothing was loaded


def test_missing_data_dir_fails_before_model_loads(tmp_path):
    cfg = compose([f"paths.data_dir={tmp_path / 'empty'}"])
    (tmp_path / "empty").mkdir()
    from harness.tasks import DataError

    with pytest.raises(DataError, match="HARNESS_DATA_DIR"):
        execute(cfg, tmp_path / "run")
    rec = json.loads((tmp_path / "run" / "record.json").read_text())
    assert rec["status"] == "failed" and "params" not in rec


def test_quantized_full_finetuning_is_rejected(tmp_path):
    cfg = compose(["method=qlora_nf4", "method.adapter=false"])
    with pytest.raises(ConfigError, match="cannot be fully fine-tuned"):
        execute(cfg, tmp_path)


def _cli(*args, no_torch_dir=None):
    env = {**os.environ, "HARNESS_NO_REEXEC": "1"}
    if no_torch_dir is not None:  # a `torch` that cannot be imported: proves nothing heavy loads
        env["PYTHONPATH"] = str(no_torch_dir)
    return subprocess.run([sys.executable, "-m", "harness.run", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_cfg_job_and_help_load_no_model(tmp_path):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch must not load for --cfg/--help')")
    out = _cli("--cfg", "job", "method=qlora_nf4_dq", "lora.targets=qkvo", no_torch_dir=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "quant: nf4" in out.stdout and "targets: qkvo" in out.stdout
    out = _cli("--help", no_torch_dir=tmp_path)
    assert out.returncode == 0 and "method: bitfit, fake_fp4, fake_fp4_e3m0, fake_int4, fake_nf4, full, head_only, lora" in out.stdout


def test_cli_reports_bad_group_option():
    out = _cli("method=nope")
    assert out.returncode != 0
    assert "Could not find 'method/nope'" in out.stderr and "qlora_nf4_dq" in out.stderr


def test_model_folder_without_a_model_is_named(tmp_path):
    from harness.models import ModelError

    (tmp_path / "empty_model").mkdir()
    cfg = compose([f"model.source={tmp_path / 'empty_model'}", "task.train_size=8", "task.eval_size=8"])
    with pytest.raises(ModelError, match="holds no model"):
        execute(cfg, tmp_path / "run")


TASKS = sorted(p.stem for p in (CONF / "task").glob("*.yaml"))
MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
METHODS = sorted(p.stem for p in (CONF / "method").glob("*.yaml"))


def test_every_task_model_and_method_config_composes_and_validates():
    """Each conf/task with a model of its kind, each conf/model with a task of its kind, each conf/method on the
    default task: composed and validated (no model loads)."""
    from harness.config import validate

    causal_kinds = ("generation", "multiple_choice")
    for task in TASKS:
        kind = compose([f"task={task}"]).task.kind.value
        validate(compose([f"task={task}", f"model={'smollm2_135m' if kind in causal_kinds else 'minilm_l6'}"]))
    for model in MODELS:
        arch = compose([f"model={model}"]).model.arch
        decoder = arch in ("llama", "gpt2", "opt")
        validate(compose([f"model={model}", f"task={'wikisql' if decoder else 'sst2'}"]))
    for method in METHODS:
        task = ["task=mrpc", "task.pair_encoding=bi"] if method == "zero_shot" else []
        validate(compose([f"method={method}", *task]))


def test_a_composed_config_is_converted_once_to_the_schemas_dataclasses_and_records_the_same_dict():
    """compose() gives the schema's dataclasses (enums as members, interpolations resolved), and the plain dict a
    record stores (and hashes) is the one the DictConfig gave, key order included, for every group's config and
    every experiment: converting changed no config hash, so finished runs still count as done."""
    import json
    from dataclasses import is_dataclass

    from harness.config import Config, Dtype, compose_node, plain, resolved, typed

    cfg = compose(["method=qlora_nf4", "train.report_to=[tensorboard]"])
    assert isinstance(cfg, Config) and is_dataclass(cfg.train) and isinstance(cfg.method.compute_dtype, Dtype)
    assert "${" not in cfg.paths.output_root and typed(cfg) is cfg
    cases = [[f"method={n}"] for n in METHODS] + [[f"+experiment={p.stem}"] for p in sorted((CONF / "experiment").glob("*.yaml"))]
    cases += [["search=mrpc_minilm"], ["train.report_to=[tensorboard]", "task=wikisql", "model=smollm2_135m"]]
    for ovr in cases:
        node = compose_node(ovr)
        assert json.dumps(resolved(typed(node))) == json.dumps(plain(node)), ovr
    with pytest.raises(TypeError, match="composed run config"):
        typed({"train": {}})


def test_a_records_stored_config_becomes_a_typed_config_again():
    """config.from_record: the plain dict a record stores -> the schema's dataclasses (eval and the planner rebuild a
    run from it), dotted overrides applied, keys a later schema dropped left out, nested sections typed too."""
    from harness.config import Config, Quant, TaskKind, from_record, resolved

    stored = resolved(compose(["model=smollm2_135m", "task=wikisql", "method=qlora_nf4", "lora.r=4"]))
    stored["train"]["a_key_removed_since"] = 1
    stored["method"]["another_one"] = "x"
    cfg = from_record(stored, {"train.max_steps": 0, "plan.device": "cpu"})
    assert isinstance(cfg, Config) and cfg.method.quant == Quant.nf4 and cfg.task.kind == TaskKind.generation
    assert cfg.lora.r == 4 and cfg.train.max_steps == 0 and cfg.plan.device == "cpu"
    assert not hasattr(cfg.train, "a_key_removed_since") and not hasattr(cfg.method, "another_one")
    back = resolved(cfg)
    del stored["train"]["a_key_removed_since"], stored["method"]["another_one"]
    stored["train"]["max_steps"], stored["plan"]["device"] = 0, "cpu"
    assert back == stored  # everything else round-trips


def test_methods_and_tasks_are_declared_once_in_their_yaml():
    """Every method and task carries its display title in its own YAML; the reports' titles and the planner's
    methods are read from conf/, so a new method variant is one file; a title changes no run's config hash."""
    from harness import catalog, plan
    from harness.records import config_hash
    from harness.report import tables

    for group in ("method", "task"):
        for name, entry in catalog.entries(group).items():
            assert entry.get("name") == name and entry.get("title"), (group, name)
    assert tables.METHOD_LABELS["qlora_nf4_dq"] == "QLoRA NF4+DQ" and tables.TASK_LABELS["stsb"] == "STS-B"
    assert set(tables.METHOD_LABELS) == set(METHODS) and set(tables.TASK_LABELS) == set(TASKS)
    assert plan.METHODS == ("full", "lora", "lora_bf16", "qlora_int8", "qlora_fp4", "qlora_fp4_dq", "qlora_nf4",
                            "qlora_nf4_dq")
    from harness.config import resolved

    cfg = resolved(compose(["method=qlora_nf4"]))
    retitled = {**cfg, "method": {**cfg["method"], "title": "another"}, "task": {**cfg["task"], "title": "x"}}
    assert config_hash(retitled) == config_hash(cfg)
    assert config_hash({**cfg, "method": {**cfg["method"], "double_quant": True}}) != config_hash(cfg)


def test_a_missing_lora_target_fails_before_data_or_weights_load(tmp_path):
    """The LoRA targets are checked on the meta device from model.shape: the error names the model's linear
    modules and comes before the data is read (an empty data directory is never looked into)."""
    import time

    from harness import methods

    cfg = compose(["model=minilm_l6", "model.arch=llama", "lora.targets=qv"])
    with pytest.raises(ConfigError, match=r"target 'q' maps to 'q_proj' for arch 'llama'.*'query'"):
        methods.check_targets(cfg)
    assert methods.check_targets(compose(["model=minilm_l6", "lora.targets=qkvo"])) == [
        "query", "key", "value", "attention.output.dense"]
    (tmp_path / "empty").mkdir()
    t = time.perf_counter()
    with pytest.raises(ConfigError, match="q_proj"):
        execute(compose(["model=minilm_l6", "model.arch=llama", "lora.targets=qv", f"paths.output_root={tmp_path}",
                         f"paths.data_dir={tmp_path / 'empty'}"]), tmp_path / "run")
    assert time.perf_counter() - t < 10


def test_the_attention_kernel_reaches_the_model_the_plan_and_the_hash(tiny_bert):
    """model.attn_implementation: loaded as asked (sdpa_cpu, the default, registered with transformers); the planner
    keeps eager attention's probabilities and sdpa_cpu's fp32 attention inputs under bf16 autocast (more activation
    memory than transformers' sdpa); null hashes as a record from before the key (those runs resume), the default
    sdpa_cpu does not (it computes differently on the CPU)."""
    from harness import models
    from harness.config import plain
    from harness.plan import plan_at
    from harness.records import config_hash
    from tests.conftest import tiny_overrides

    base = tiny_overrides(tiny_bert, "bert", "mean")
    assert compose(base).model.attn_implementation == "sdpa_cpu"
    for attn in ("eager", "sdpa", "sdpa_cpu"):
        cfg = compose(base + [f"model.attn_implementation={attn}"])
        clf = models.load_classifier(tiny_bert, cfg.model, 2)
        backbone = getattr(clf, "backbone", clf)
        assert backbone.config._attn_implementation == attn
    smol = ["model=smollm2_135m", "task=wikisql", "method=lora", "method.compute_dtype=bf16"]
    plans = {
        (a, d): plan_at(compose(smol + [f"model.attn_implementation={a}"]), None, d).parts["activations"]
        for a, d in (("null", "cpu"), ("eager", "cpu"), ("sdpa_cpu", "cpu"), ("sdpa_cpu", "cuda"), ("null", "cuda"))}
    assert plans["eager", "cpu"] > plans["sdpa_cpu", "cpu"] > plans["null", "cpu"]
    assert plans["sdpa_cpu", "cuda"] == plans["null", "cuda"]  # off the CPU it is transformers' sdpa
    plain_cfg = plain(compose([]))
    before = {**plain_cfg, "model": {k: v for k, v in plain_cfg["model"].items() if k != "attn_implementation"}}
    assert config_hash(plain(compose(["model.attn_implementation=null"]))) == config_hash(before)
    assert config_hash(plain_cfg) != config_hash(before)
    assert config_hash(plain(compose(["model.attn_implementation=eager"]))) != config_hash(plain_cfg)
