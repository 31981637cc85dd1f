"""One run as a library: config -> data -> model + method -> train -> evaluate -> one result record.

`execute(cfg, out_dir)` runs one experiment and writes its record; `build_model`, `num_labels`, `head_kind` and the
data preparation are the builders the benchmarks, the evaluation-only path and the search reuse. The command line
is harness/run.py (Hydra), a thin entry point over `execute`.

The record (record.json in the run's output directory) is written atomically at the end, with status ok,
failed (error and traceback) or diverged. An interrupted run writes no record, so it never counts as done.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import register_resolvers
from harness.profile import process_env

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from harness.config import Config

register_resolvers()  # the run directories are built with ${path_part:}, also in a submitit job's process

log = logging.getLogger("harness.run")  # the name users see in every run's log


def reexec_with_process_env(module: str = "harness.run") -> None:
    """OpenMP reads its wait policy at start-up only: re-execute once with profile.process_env set (Linux)."""
    if sys.platform != "linux" or os.environ.get("HARNESS_NO_REEXEC"):
        return
    want = process_env(os.environ)
    if all(os.environ.get(k) == v for k, v in want.items()):
        return
    env = {**os.environ, **want}
    os.execve(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]], env)


def execute(cfg: Config | DictConfig, out_dir: str | os.PathLike, on_evaluate=None) -> dict:
    """Run one experiment and write its record. Returns the record (also on failure).

    `on_evaluate(step, {split: {metric: value}})` sees every evaluation during training; raising
    `harness.train.Pruned` from it stops the run, recorded with status `pruned` (harness.search does this)."""
    from harness import records
    from harness.config import resolved, typed, validate

    cfg = typed(cfg)  # the one conversion of a composed config: everything below reads typed attributes
    t_start = time.perf_counter()
    main_process = _process_rank() == 0
    # an unwritable output fails now, not after training; under `accelerate launch` only process 0 writes
    out_dir = records.check_writable(out_dir) if main_process else Path(out_dir)
    started = datetime.now(timezone.utc).isoformat()
    rcfg = resolved(cfg)
    rec: dict = {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": out_dir.name,
        "experiment": cfg.experiment_name,
        "status": "running",
        "config_hash": records.config_hash(rcfg),
        "config": rcfg,
        "tags": rcfg.get("tags", {}),
        "seed": cfg.train.seed,
        "started_at": started,
    }
    tracking = None
    try:
        validate(cfg)
        if cfg.train.report_to and main_process:
            from harness.tracking import Tracking, check

            check(cfg)
            tracking = Tracking(cfg, out_dir, out_dir.name)
            rec["tracking"] = tracking.start(rcfg)
        _run(cfg, out_dir, rec, on_evaluate)
        rec["status"] = "ok"
    except Exception as e:  # recorded, then re-raised so the process exits non-zero
        from harness.train import DivergedError, Pruned

        if isinstance(e, Pruned):
            rec["status"] = "pruned"
            rec["pruned"] = {"step": e.step, "value": e.value, "history": e.history}
        else:
            rec["status"] = "diverged" if isinstance(e, DivergedError) else "failed"
            rec["error"] = f"{type(e).__name__}: {e}"
            rec["traceback"] = traceback.format_exc()
            if type(e).__name__ in ("OutOfMemoryError", "MemoryError"):
                rec["hint"] = ("out of memory: lower train.batch_size (raise train.grad_accum to keep the batch) or "
                               "train.max_seq_len, set train.gradient_checkpointing=true, or use a quantized method; "
                               "`python -m harness.plan` shows what each setting needs")
        raise
    finally:
        if tracking is not None:  # the trackers' runs close as failed unless this one is ok (interrupted too)
            tracking.finish(rec)
        if rec["status"] != "running" and main_process:  # KeyboardInterrupt/SystemExit: no record, not done
            rec["finished_at"] = datetime.now(timezone.utc).isoformat()
            rec.setdefault("times", {})["total_s"] = time.perf_counter() - t_start
            rec["versions"] = records.versions()
            rec["git"] = records.git_commit()
            try:
                rec["host"] = records.host()
            except Exception as e:  # never lose a record over host details
                rec["host"] = {"error": str(e)}
            try:
                path = records.write_json_atomic(out_dir / records.RECORD_NAME, _shaped(rec))
            except OSError as e:  # disk full, directory gone: say so; the records written before are untouched
                raise records.OutputError(
                    f"the record of this run (status {rec['status']}) could not be written to "
                    f"{str(out_dir / records.RECORD_NAME)!r}: {e.strerror or e}; records written before are untouched"
                ) from e
            log.info("record: %s (status %s)", path, rec["status"])
            if rec["status"] == "ok" and rec.get("checkpoints"):  # recorded: nothing left to resume
                import shutil

                ckpt = Path(rec["checkpoints"])
                shutil.rmtree(ckpt, ignore_errors=True)
                for parent in (ckpt.parent, ckpt.parent.parent):  # <experiment>/ and checkpoints/, once empty
                    try:
                        parent.rmdir()
                    except OSError:
                        break
            _index(cfg, path, rec)
    return rec


def _shaped(rec: dict) -> dict:
    """The record through its declared shape (harness/record.py). A key outside it fails under
    HARNESS_STRICT_RECORD=1 (the tests set it); a user's run is never lost over it: logged, written as it is."""
    from harness.record import RecordShapeError, check_shape

    try:
        return check_shape(rec)
    except RecordShapeError as e:
        if os.environ.get("HARNESS_STRICT_RECORD"):
            raise
        log.error("%s; writing the record as it is", e)
        return rec


def _launch_env(name: str, default: int) -> int:
    """RANK / WORLD_SIZE of a multi-process launch (`accelerate launch`, torchrun set them); default otherwise."""
    try:
        return int(os.environ.get(name) or default)
    except ValueError:
        return default


def _process_rank() -> int:
    return _launch_env("RANK", 0)


def _index(cfg: Config, path: Path, rec: dict) -> None:
    """Add the record to the results store's index; the file is already safe, so a failure here only warns."""
    from harness.store import Store

    try:
        Store(cfg.paths.output_root).add(path, rec)
    except Exception as e:
        log.warning("record written but not indexed (the next sync picks it up): %s", e)


def _already_done(cfg: Config) -> str | None:
    """Path of an ok record with this run's config hash (used to resume sweeps on any launcher)."""
    from harness.store import Store

    return Store(cfg.paths.output_root).done_for(cfg)


def _run(cfg: Config, out_dir: Path, rec: dict, on_evaluate=None) -> None:
    t0 = time.perf_counter()
    import torch
    import transformers

    from harness import methods, models, records
    from harness.config import baseline_of, effective_lr, is_bi_encoder, is_causal, pair_encoding_of, trains
    from harness.record import MethodInfo, ModelInfo, Params, TaskInfo
    from harness.profile import MemoryMeter
    from harness.tasks import find_data_dir, load_task

    transformers.logging.set_verbosity_error()
    # train.threads=0: every core, or this job's share when the sweep launcher runs several at once
    torch.set_num_threads(cfg.train.threads or int(os.environ.get("HARNESS_THREADS") or 0) or os.cpu_count() or 1)
    rec["times"] = {"imports_s": time.perf_counter() - t0}
    task = cfg.task
    causal = is_causal(task)
    baseline = baseline_of(cfg.method)
    train_steps = trains(cfg)
    # the majority and the bi-encoder zero-shot baselines read the train labels, though they take no step
    need_train = train_steps or baseline == "majority" or (baseline == "zero_shot" and not causal)

    # LoRA targets against the model's structure on the meta device (from model.shape): a target the model lacks
    # fails here, in a second, before the data is read or the weights load
    if cfg.method.adapter and cfg.model.shape:
        methods.check_targets(cfg)
    # data first: a missing or malformed file fails before any model loads
    t = time.perf_counter()
    data = load_task(task, find_data_dir(cfg.paths.data_dir), seed=cfg.train.seed, need_train=need_train)
    model_path = models.resolve(cfg.model.source, cfg.paths.cache_dir, cfg.model.name)
    if cfg.method.adapter and not cfg.model.shape:  # a model folder without `shape`: its config.json
        methods.check_targets(cfg, model_path)
    if baseline != "majority":
        models.check_shape(model_path, cfg.model)  # the weights are the model the record will name
    tokenizer = models.load_tokenizer(model_path, cfg.model)
    prep = _prepare_causal(cfg, data, tokenizer) if causal else _prepare_classification(cfg, data, tokenizer)
    rec["task"] = TaskInfo.of(
        name=task.name, kind=str(task.kind), train_examples=len(data.train) if need_train else 0,
        pair_encoding=None if causal else pair_encoding_of(task), tune=bool(task.tune),
        eval_examples={s: len(df) for s, df in data.evals.items()}, data_source=data.source, extra=prep["info"],
    ).as_dict()
    rec["times"]["data_s"] = time.perf_counter() - t
    first = next(iter(data.evals))
    log.info("data: %d train, %s eval (%s)", rec["task"]["train_examples"], rec["task"]["eval_examples"],
             data.source[first])
    if baseline == "majority":  # no model: the train split's majority class (or mean) on every eval split
        from harness.baselines import majority_record

        majority_record(cfg, data, rec)
        return

    # model + method
    meter = MemoryMeter(device="cuda" if torch.cuda.is_available() else "cpu")
    t = time.perf_counter()
    model, dtype, load_dtype, bnb = build_model(cfg, model_path, num_labels(task), meter=meter)
    rec["times"]["load_s"] = time.perf_counter() - t
    params = Params.of(**methods.count_parameters(model), adapter=methods.adapter_parameters(model)).as_dict()
    rec["params"] = params
    rec["model"] = ModelInfo.of(
        name=cfg.model.name, source=cfg.model.source, path=model_path, arch=cfg.model.arch,
        pooling=None if causal else str(cfg.model.pooling), head=head_kind(cfg),
        device=str(next(model.parameters()).device),
        linear_storage=_storage_summary(methods.linear_storage(model)),
        fake_quant=getattr(model, "harness_fake_quant", None),
    ).as_dict()
    peft_cfg = getattr(model, "peft_config", {}).get("default") if cfg.method.adapter else None
    rec["method"] = MethodInfo.of(
        name=cfg.method.name,
        baseline=baseline,
        adapter=bool(cfg.method.adapter),
        compute_dtype=str(dtype).replace("torch.", ""),
        base_dtype=str(load_dtype).replace("torch.", ""),
        bnb_config=methods.describe_bnb(bnb),
        lora=None if peft_cfg is None else {
            "r": peft_cfg.r, "alpha": peft_cfg.lora_alpha, "dropout": peft_cfg.lora_dropout,
            "targets": cfg.lora.targets, "target_modules": sorted(peft_cfg.target_modules),
            "rank_budget": cfg.lora.rank_budget, "use_rslora": bool(peft_cfg.use_rslora),
            "use_dora": bool(peft_cfg.use_dora), "init": str(cfg.lora.init),
            # what multiplies B A x (alpha / r, or alpha / sqrt(r) with rsLoRA), as peft's layers hold it
            "scale": next((float(m.scaling["default"]) for m in model.modules()
                           if isinstance(getattr(m, "scaling", None), dict) and "default" in m.scaling), None),
        },
        gradient_checkpointing=bool(cfg.train.gradient_checkpointing),
        lr=effective_lr(cfg) if train_steps else None,
        trained=train_steps,
    ).as_dict()
    log.info("model %s, method %s: %d / %d trainable (%.3f%%)", cfg.model.name, cfg.method.name,
             params["trainable"], params["total"], params["trainable_pct"])

    # the adapter's weights before any step (a few MB at most): the analysis measures how far training moved them
    init = ({k.replace(".default.", "."): v.detach().to("cpu", copy=True)  # named as peft's saved adapter names them
             for k, v in model.state_dict().items() if "lora_" in k}
            if cfg.method.adapter and cfg.train.save_adapter and train_steps else None)
    if is_bi_encoder(task) and len(task.labels) == 2 and len(prep["train"]):
        # a two-class bi-encoder starts from the zero-shot classifier: the cosine threshold that fits the train pairs
        from harness.baselines import fit_cosine_threshold

        rec["cosine_threshold"] = fit_cosine_threshold(model, prep["train"], cfg, tokenizer)
    final_evaluate = None
    if causal:
        final_evaluate = _causal_evaluator(cfg, model, tokenizer, data, prep, dtype, out_dir, rec)
        if cfg.mmlu_eval.enabled and cfg.mmlu_eval.before:
            rec["mmlu_before"] = _mmlu(cfg, model, tokenizer, dtype, _mmlu_file(out_dir, "mmlu_before"))
    from harness.train import train_and_evaluate

    out = train_and_evaluate(model, tokenizer, prep["train"], prep["evals"], cfg, str(out_dir / "trainer"),
                             dtype=dtype, on_trained=meter.trained, label_norm=prep["norm"],
                             final_evaluate=final_evaluate, on_evaluate=on_evaluate,
                             predictions_dir=out_dir / "predictions" if _process_rank() == 0 else None,
                             memory_window=meter.window_closed,
                             checkpoint_dir=records.checkpoint_dir(cfg.paths.output_root, cfg.experiment_name,
                                                                   rec["config_hash"]))
    if out["resumed"]:
        rec["resumed"] = out["resumed"]  # this process trained from that step on; the record covers the whole run
    if causal and cfg.mmlu_eval.enabled:
        key = "mmlu_after" if train_steps else "mmlu"
        rec[key] = _mmlu(cfg, model, tokenizer, dtype, _mmlu_file(out_dir, key))
    rec["memory"] = meter.record()
    if out.get("memory_breakdown"):
        bd = dict(out["memory_breakdown"])
        if rec["memory"].get("peak_mb") is not None:  # the rest of the peak: activations, temporaries, allocator
            bd["activations_and_other_mb"] = rec["memory"]["peak_mb"] - (
                bd["weights_mb"] + bd["gradients_mb"] + bd["optimizer_state_mb"])
        rec["memory"]["breakdown"] = bd
    rec["metrics"] = out["metrics"]
    rec["throughput"] = out["throughput"]
    if train_steps:  # planned at the run's longest batch (its throughput holds it)
        rec["memory"]["plan"] = _plan_for(cfg, rec)
    rec["times"].update(out["times"])
    rec["steps"] = out["steps"]
    if out["checkpoints"]:
        rec["checkpoints"] = out["checkpoints"]
    rec["method"]["optimizer"] = out["optimizer"]
    world = _launch_env("WORLD_SIZE", 1)
    if world > 1:
        dist = torch.distributed
        rec["distributed"] = {"world_size": world,
                              "backend": dist.get_backend() if dist.is_available() and dist.is_initialized() else None,
                              "throughput": "process 0's batches; the run's total is about world_size times it"}
    if cfg.method.adapter and cfg.train.save_adapter and train_steps and _process_rank() == 0:
        adir = out_dir / "adapter"
        model.save_pretrained(adir)
        rec["adapter"] = {"path": str(adir), "bytes": sum(f.stat().st_size for f in adir.glob("*.safetensors"))}
        if init:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in init.items()}, str(adir / records.ADAPTER_INIT_NAME))
            rec["adapter"]["init"] = str(adir / records.ADAPTER_INIT_NAME)
    h = rec["metrics"]["headline"]
    thr = rec["throughput"] or {}
    log.info("final %s %s = %.4f (best %.4f at step %s); %.0f train tokens/s; train peak %.0f MB over baseline",
             h["split"], h["metric"], rec["metrics"]["final"][h["split"]][h["metric"]],
             rec["metrics"]["best"][h["split"]][h["metric"]], rec["metrics"]["best_step"],
             thr.get("tokens_per_s") or float("nan"), rec["memory"]["peak_mb"] or float("nan"))


def num_labels(task) -> int | None:
    """What build_model takes: None for a causal LM, 1 for a regression, else the number of classes."""
    from harness.config import is_causal, is_regression

    return None if is_causal(task) else (1 if is_regression(task) else len(task.labels))


def head_kind(cfg: Config) -> str:
    """What scores the task: the LM head, a cross-encoder's head, or a bi-encoder's cosine / (u, v, |u-v|) head."""
    from harness.config import baseline_of, is_bi_encoder, is_causal, is_regression

    if is_causal(cfg.task):
        return "causal_lm"
    if not is_bi_encoder(cfg.task):
        return "sequence_classifier"
    if is_regression(cfg.task):
        return "bi_encoder_cosine" + ("+projection" if baseline_of(cfg.method) == "head_only" else "")
    return "bi_encoder_cosine_threshold" if len(cfg.task.labels) == 2 else "bi_encoder_uv_head"


def build_model(cfg: Config, model_path: str, num_labels: int | None = None, meter=None):
    """The model a run trains: base weights loaded (quantized per the method), wrapped by the method, seeded by
    train.seed. `num_labels` None = a causal LM, else a sequence classifier with that many outputs. `meter`
    (profile.MemoryMeter) starts once the method's libraries are imported (bitsandbytes' native code is not the
    model's memory) and marks the end of loading.
    Returns (model, compute dtype, base dtype, BitsAndBytesConfig or None)."""
    import torch
    import transformers

    from harness import methods, models

    transformers.set_seed(cfg.train.seed)
    dtype = methods.compute_dtype(cfg.method.compute_dtype)
    bnb = methods.bnb_config(cfg.method, dtype)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    load_dtype = methods.base_dtype(cfg.method)
    if load_dtype == torch.bfloat16 and device == "cpu" and not methods.host_has_bf16():
        log.warning("method %s stores the base in bf16, but bf16 matmuls are not this CPU's fast path (no AMX or AVX512-BF16, or "
                    "ATEN_CPU_CAPABILITY holds torch to AVX2): an AVX2-only CPU emulates them, measured ~10x slower "
                    "than an fp32 base (MiniLM-L6 LoRA on MRPC: 1.1 against ~11 samples/s, 2-core AMD EPYC, AVX2 "
                    "emulated)", cfg.method.name)
    if meter is not None:
        meter.start()
    if num_labels is None:
        model = models.load_causal_lm(model_path, cfg.model, quantization_config=bnb, dtype=load_dtype, device=device)
    else:
        from harness.config import baseline_of, is_bi_encoder

        model = models.load_classifier(model_path, cfg.model, num_labels, quantization_config=bnb, dtype=load_dtype,
                                       device=device, bi_encoder=is_bi_encoder(cfg.task),
                                       projection=baseline_of(cfg.method) == "head_only")
    fake = str(cfg.method.fake_quant)
    fake_info = None
    if fake != "none":  # a simulated data type: the base's linear weights rounded to its codes, before any adapter
        from harness import fakequant

        fake_info = fakequant.apply(model, fake, skip=methods.EXCLUDE_FROM_ALL_LINEAR)
    model = methods.apply(model, cfg, gradient_checkpointing=cfg.train.gradient_checkpointing)
    if cfg.train.fast_dropout:
        from harness.dropout import use_fast_dropout

        use_fast_dropout(model)
    model.harness_fake_quant = fake_info  # read by run() into the record (model.fake_quant)
    if meter is not None:
        meter.loaded()
    return model, dtype, load_dtype, bnb


def _plan_for(cfg: Config, rec: dict) -> dict | None:
    """The memory planner's prediction for this run (harness/plan.py) at its longest batch, beside the measurement."""
    if not cfg.model.shape:
        return None
    try:
        from harness.plan import plan_at

        device = "cuda" if rec.get("memory", {}).get("method", "").startswith("cuda") else "cpu"
        p = plan_at(cfg, (rec.get("throughput") or {}).get("longest_batch"), device)
        return {"total_mb": p.total / 2**20, "parts_mb": {k: v / 2**20 for k, v in p.parts.items()},
                "setting": p.setting, "measured_peak_mb": rec["memory"].get("peak_mb"),
                "ratio": (p.total / 2**20) / rec["memory"]["peak_mb"] if rec["memory"].get("peak_mb") else None}
    except Exception as e:  # a planner failure never costs the run its record
        log.warning("memory plan not computed: %s", e)
        return {"error": f"{type(e).__name__}: {e}"}


def _prepare_classification(cfg: Config, data, tokenizer) -> dict:
    from harness.config import is_bi_encoder, is_regression
    from harness.metrics import majority_baseline
    from harness.train import label_norm, tokenize

    task = cfg.task
    regression = is_regression(task)
    bi = is_bi_encoder(task)
    fields = list(task.text_fields)
    # a bi-encoder regresses the cosine with CoSENT, which needs only the labels' order: they stay as they are
    norm = label_norm(data.train) if regression and not bi and len(data.train) else None
    n = cfg.train.max_seq_len
    train_ds = tokenize(data.train, tokenizer, fields, n, regression, norm, bi=bi)
    # eval sets sorted by length: each eval batch pads to a similar length (STS-B dev as a bi-encoder, 1 thread:
    # 19.8 s unsorted vs 9.5 s sorted at batch 128, 6.8 s at batch 32); the labels travel with their rows
    evals = {s: tokenize(df, tokenizer, fields, n, regression, norm, bi=bi).sort("length")
             for s, df in data.evals.items()}
    info = {
        # an evaluation-only run (train.max_steps=0) reads no train split: no majority class, no train tokens
        "majority_baseline": {
            s: majority_baseline(list(task.metrics), data.train["label"], df["label"], regression)
            for s, df in data.evals.items()
        } if len(data.train) else None,
        "train_tokens_per_epoch": int(sum(train_ds["length"])) if len(data.train) else 0,
        "label_standardization": None if norm is None else {"mean": norm[0], "std": norm[1]},
    }
    return {"train": train_ds, "evals": evals, "norm": norm, "info": info}


def _prepare_causal(cfg: Config, data, tokenizer) -> dict:
    from harness.config import stop_strings
    from harness.lm import IGNORE, tokenize_sft

    n = cfg.train.max_seq_len
    train_ds = tokenize_sft(data.train, tokenizer, n) if len(data.train) else tokenize_sft(
        next(iter(data.evals.values())).iloc[:1], tokenizer, n)
    evals = {s: tokenize_sft(df, tokenizer, n) for s, df in data.evals.items()}
    info = {
        "train_tokens_per_epoch": int(sum(train_ds["length"])) if len(data.train) else 0,
        "train_answer_tokens_per_epoch": int(sum(sum(1 for x in lab if x != IGNORE) for lab in train_ds["labels"]))
        if len(data.train) else 0,
        "prompt_format": cfg.task.format,
        "max_new_tokens": int(cfg.task.max_new_tokens),
        "stop": stop_strings(cfg.task),
        "execution_tables": len(data.tables) if data.tables else 0,
    }
    return {"train": train_ds, "evals": evals, "norm": None, "info": info}


def _causal_evaluator(cfg: Config, model, tokenizer, data, prep, dtype, out_dir: Path, rec: dict):
    from harness.evaluate import evaluate_all

    def final() -> dict:
        res, gen = evaluate_all(model, tokenizer, cfg.task, data.evals, prep["evals"],
                                batch_size=cfg.train.eval_batch_size, max_len=cfg.train.max_seq_len, dtype=dtype,
                                out_dir=out_dir, tables=data.tables)
        if gen:
            rec["generation"] = gen
        # MMLU's per-subject table stays in the record, out of the metric history
        for split, m in res.items():
            if "per_subject" in m:
                rec.setdefault("multiple_choice", {})[split] = {k: m.pop(k) for k in
                                                                ("per_subject", "per_category", "predicted_distribution")}
        return res

    return final


def _mmlu_file(out_dir: Path, key: str) -> Path | None:
    """Where a run's MMLU answers go, one row per question (predictions/<key>.jsonl: i, subject, pred, gold), so a
    report can bootstrap over questions; None on a process that is not rank 0."""
    return out_dir / "predictions" / f"{key}.jsonl" if _process_rank() == 0 else None


def _mmlu(cfg: Config, model, tokenizer, dtype, save_to: Path | None = None) -> dict:
    """MMLU as an extra evaluation of this run's model (mmlu_eval.*); `save_to`: a JSONL file for its per-question
    answers."""
    from harness.config import TaskConfig, TaskKind
    from harness.evaluate import score_choices
    from harness.tasks import find_data_dir, load_task

    m = cfg.mmlu_eval
    mtask = TaskConfig(
        name="mmlu", kind=TaskKind.multiple_choice, format=m.format, train_split="validation",
        eval_splits=["validation"], per_subject=m.per_subject, shots=m.shots, eval_size=None,
        holdout_size=None, hub_id="cais/mmlu", hub_config="all", hub_rename={},
        local={"validation": [{"path": m.path, "shots_from": "mmlu/csv/dev"}]},
    )
    data = load_task(mtask, find_data_dir(cfg.paths.data_dir), seed=0, need_train=False)
    t = time.perf_counter()
    res, preds = score_choices(model, tokenizer, data.evals["validation"], batch_size=m.batch_size,
                               max_len=cfg.model.max_position, dtype=dtype)
    if save_to is not None:
        from harness.evaluate import write_jsonl

        write_jsonl(save_to, preds)
    res["seconds"] = time.perf_counter() - t
    res["source"] = data.source["validation"]
    log.info("MMLU %d questions: %.4f (mean over subjects)", res["questions"], res["accuracy"])
    return res


def _storage_summary(layers: list[dict]) -> dict:
    """Bytes the base model's linear layers hold, summed (weights, quantization constants), with bits per parameter."""
    numel = sum(x["numel"] for x in layers)
    w = sum(x["weight_bytes"] for x in layers)
    c = sum(x["absmax_bytes"] + x["absmax2_bytes"] + x["per_tensor_bytes"] for x in layers)
    kinds = sorted({x["quant"] for x in layers})
    per_tensor = sum(x["per_tensor_bytes"] for x in layers)
    return {"layers": len(layers), "storage": kinds, "params": numel, "weight_bytes": w, "constant_bytes": c,
            # as the QLoRA paper counts: packed weights + per-block constants, without bitsandbytes' per-tensor
            # code book and offset (1 KiB per layer: negligible at 65B, ~0.02 bits/param at 576x576)
            "bits_per_param_blocks": 8 * (w + c - per_tensor) / max(numel, 1),
            "bits_per_param": 8 * (w + c) / max(numel, 1)}
