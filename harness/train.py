"""Training and evaluation with the Hugging Face Trainer (so `accelerate launch` gives multi-GPU, FSDP and
DeepSpeed without code of ours), plus callbacks that time steps, count real tokens and keep the eval history.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from harness import metrics as metric_fns
from harness.config import effective_lr, is_bi_encoder, is_causal, is_regression, trains
from harness.lm import padded_length, scored_positions
from harness.profile import Throughput
from harness.tracking import TRACKERS
from harness.tracking import names as tracker_names

if TYPE_CHECKING:
    from harness.config import Config

log = logging.getLogger(__name__)

OPTIMIZERS = {
    "adamw": "adamw_torch",
    "adamw_fused": "adamw_torch_fused",
    "adamw_8bit": "adamw_bnb_8bit",
    "paged_adamw": "paged_adamw_32bit",
    "paged_adamw_8bit": "paged_adamw_8bit",
}


class DivergedError(RuntimeError):
    pass


class Pruned(Exception):
    """Raised by an `on_evaluate` hook (a search's pruner) to stop a run early; the run is recorded as pruned."""

    def __init__(self, step: int, value: float | None, history: list[dict] | None = None):
        super().__init__(f"pruned at step {step} (value {value})")
        self.step, self.value, self.history = step, value, history or []


def label_norm(df: pd.DataFrame) -> tuple[float, float]:
    """(mean, std) of a regression task's training labels. The model is trained on standardised targets: an MSE
    head starting near 0 would otherwise spend a short run learning the labels' offset (STS-B: 0-5, mean ~2.7)
    instead of the similarity; predictions are mapped back before any metric is computed."""
    y = df["label"].astype(float)
    std = float(y.std(ddof=0))
    return float(y.mean()), std if std > 0 else 1.0


def tokenize(df: pd.DataFrame, tokenizer, text_fields: list[str], max_len: int, regression: bool,
             norm: tuple[float, float] | None = None, bi: bool = False):
    """DataFrame -> datasets.Dataset with input_ids, attention_mask (token_type_ids), labels, length.
    `norm` = (mean, std) standardises regression labels (see `label_norm`). `bi` (a bi-encoder's sentence pairs):
    each text alone, as input_ids/attention_mask and input_ids_b/attention_mask_b; length = both together."""
    mean, std = norm or (0.0, 1.0)
    import datasets

    ds = datasets.Dataset.from_pandas(df, preserve_index=False)

    def enc(batch):
        texts = [batch[f] for f in text_fields]
        if bi:
            a = tokenizer(texts[0], truncation=True, max_length=max_len, return_token_type_ids=False)
            b = tokenizer(texts[1], truncation=True, max_length=max_len, return_token_type_ids=False)
            out = {"input_ids": a["input_ids"], "attention_mask": a["attention_mask"],
                   "input_ids_b": b["input_ids"], "attention_mask_b": b["attention_mask"]}
        else:
            out = tokenizer(*texts, truncation=True, max_length=max_len)
        out["labels"] = ([(float(x) - mean) / std for x in batch["label"]] if regression
                         else [int(x) for x in batch["label"]])
        out["length"] = [len(x) + len(y) for x, y in zip(out["input_ids"], out["input_ids_b"])] if bi else [
            len(x) for x in out["input_ids"]]
        return out

    return ds.map(enc, batched=True, remove_columns=list(df.columns), desc="tokenize", keep_in_memory=True)


# optimizer steps in the window of exact memory (the optimizer state exists from the first): then the probe
WINDOW_STEPS = 2


class ShuffledLengthGroupedSampler(torch.utils.data.Sampler):
    """Batches of similar length in a random order. A seeded permutation is cut into mega-batches of `mega`
    batches, each sorted by length and cut into batches of `batch_size`; then every full batch is put in a
    random order (a short last batch stays last), except that the longest batch comes first.
    transformers' LengthGroupedSampler keeps each mega-batch in
    descending length, a long-to-short curriculum that a short run's final loss measurably follows
    (reports/bench/README.md); here only the batch composition is grouped, the order stays random."""

    def __init__(self, lengths, batch_size: int, seed: int = 0, mega: int = 50):
        self.lengths, self.batch_size, self.seed, self.mega, self.epoch = list(lengths), int(batch_size), seed, mega, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(len(self.lengths), generator=g).tolist()
        size = self.mega * self.batch_size
        out: list[list[int]] = []
        for i in range(0, len(perm), size):
            chunk = sorted(perm[i:i + size], key=lambda j: self.lengths[j], reverse=True)
            out += [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
        full = [b for b in out if len(b) == self.batch_size]
        short = [b for b in out if len(b) < self.batch_size]
        order = torch.randperm(len(full), generator=g).tolist()
        batches = [full[i] for i in order] + short
        # the batch holding the longest example goes first, as transformers does: an out-of-memory shows at step
        # one, and the allocator's first blocks are the largest (a later long batch would grow the peak)
        top = max(range(len(batches)), key=lambda i: max(self.lengths[j] for j in batches[i]))
        if top < len(full):
            batches.insert(0, batches.pop(top))
        return batches

    def __iter__(self):
        for b in self.batches():
            yield from b


def scored_only(inputs: dict) -> dict:
    """A causal LM's batch with the output layer and the loss restricted to the positions the loss scores: position t
    predicts token t+1, so t is kept where label t+1 is not IGNORE (the answer's tokens; the prompt's and padding's
    are not). transformers' `logits_to_keep` (a boolean [batch, seq] mask) flattens the kept hidden states to
    [n, hidden] before the output layer, and `shift_labels` gives the loss the n targets in the same order: the
    same loss as over every position (the sum over scored tokens, divided by their number or by the Trainer's
    num_items_in_batch), without the [batch, seq, vocab] logits."""
    keep, targets = scored_positions(inputs["labels"])
    return {**inputs, "logits_to_keep": keep, "shift_labels": targets}


def accepts_logits_to_keep(model) -> bool:
    """Whether a (peft-wrapped) causal LM's forward takes `logits_to_keep` (transformers' LMs do)."""
    import inspect

    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def _trainer_class():
    from transformers import Trainer, TrainerCallback

    class TimingCallback(TrainerCallback):
        def __init__(self, meter: Throughput, diverge_on_nan: bool = True, on_evaluate=None, splits=(), names=()):
            self.meter, self.diverge_on_nan = meter, diverge_on_nan
            self.hook, self.splits, self.names = on_evaluate, splits, names
            self.progress, self.last_loss = None, None

        def on_train_begin(self, args, state, control, **kw):
            from harness.progress import Progress

            if state.is_world_process_zero:
                self.progress = Progress(state.max_steps)

        def on_train_end(self, args, state, control, **kw):
            if self.progress is not None:
                self.progress.close()

        def on_evaluate(self, args, state, control, metrics=None, **kw):
            # one call per eval split; the hook sees {split: {metric: value}} at this optimizer step
            if self.hook is not None and metrics:
                ev = {k: v for k, v in metrics.items() if k.startswith("eval_")}
                self.hook(state.global_step, _strip(ev, self.splits, self.names))

        def on_step_begin(self, args, state, control, **kw):
            self.meter.step_begin()

        def on_step_end(self, args, state, control, **kw):
            self.meter.step_end()
            # the optimizer state exists from the first step on: the window of exact memory closes after the
            # second, with a probe pass over the epoch's largest batch (HarnessTrainer.memory_probe)
            trainer = getattr(self, "trainer", None)
            if state.global_step == WINDOW_STEPS and trainer is not None and trainer.memory_window is not None:
                trainer.memory_probe()
            if self.progress is not None:
                self.progress.update(state.global_step, getattr(trainer, "_samples", 0), self.last_loss)

        def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kw):
            # second optimizer step: weights, gradients and the optimizer state (made by the first step) all exist
            if state.global_step == 1 and self.meter.breakdown is None and model is not None:
                self.meter.breakdown = memory_breakdown(model, optimizer)

        def on_log(self, args, state, control, logs=None, **kw):
            loss = (logs or {}).get("loss")
            if loss is not None:
                self.last_loss = float(loss)
            if loss is not None and self.diverge_on_nan and not math.isfinite(loss):
                raise DivergedError(f"training loss became {loss} at step {state.global_step}")

    class HarnessTrainer(Trainer):
        """Counts non-pad tokens without a host sync per step; times evaluation separately; groups training
        batches by length in a random order (`ShuffledLengthGroupedSampler`)."""

        def _get_train_sampler(self, train_dataset=None):
            ds = self.train_dataset if train_dataset is None else train_dataset
            if self.args.train_sampling_strategy != "group_by_length" or "length" not in getattr(ds, "column_names", ()):
                return super()._get_train_sampler(train_dataset)
            group = self.args.train_batch_size * self.args.gradient_accumulation_steps * max(1, self.args.world_size)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            return ShuffledLengthGroupedSampler(ds["length"], group, seed)

        def __init__(self, *a, meter: Throughput, memory_window=None, scored_logits_only: bool = False, **kw):
            super().__init__(*a, **kw)
            self.meter = meter
            # causal LMs: logits only where the loss reads them (train.scored_logits_only, `scored_only`)
            self.scored_logits_only = scored_logits_only
            self._scored = 0  # most positions one training batch scored
            self._tokens = torch.zeros((), dtype=torch.long)
            self._samples = 0
            self.eval_seconds = 0.0
            self.probe_seconds = 0.0
            # memory_window(covered: dict) is called once the exact window is over (profile.MemoryMeter)
            self.memory_window = memory_window

        def largest_batch(self) -> list[int] | None:
            """The example indices of this epoch's batch with the most padded tokens (both sides of a pair; ties:
            the longer), from the length-grouped sampler's own batches; None under another sampler."""
            sampler = self._get_train_sampler()
            if not isinstance(sampler, ShuffledLengthGroupedSampler):
                return None
            ds, collator = self.train_dataset, self.data_collator
            m = max(1, int(getattr(collator, "multiple", None) or getattr(collator, "pad_to_multiple_of", None) or 1))
            sides = [[len(x) for x in ds[col]] for col in ("input_ids", "input_ids_b") if col in ds.column_names]

            def cost(b):
                longest = [padded_length(max(lens[i] for i in b), m) for lens in sides]
                return (len(b) * sum(longest), max(longest))

            return max(sampler.batches(), key=cost)

        def memory_probe(self) -> None:
            """One forward and backward pass over the epoch's largest batch while the optimizer state exists, without
            an optimizer step: the highest activation memory any step of the run can reach, read inside the exact
            window. The gradients are dropped (the Trainer zeroes them to None after each step) and the RNG state
            restored, so training continues exactly as without it; its time is left out of the throughput."""
            hook, self.memory_window = self.memory_window, None
            t0 = time.perf_counter()
            batch = None if self.args.world_size > 1 or torch.cuda.is_available() else self.largest_batch()
            if batch is None:
                return  # no window closes: the allocator stays exact to the end of training
            inputs = self.data_collator([self.train_dataset[i] for i in batch])
            rng = torch.get_rng_state()
            Trainer.training_step(self, self.model_wrapped, inputs)
            self.model_wrapped.zero_grad(set_to_none=True)
            torch.set_rng_state(rng)
            self.probe_seconds += time.perf_counter() - t0
            b = inputs["input_ids"]
            hook({"optimizer_steps": WINDOW_STEPS, "probe_batch": {"batch_size": int(b.shape[0]),
                                                         "seq_len": int(max(inputs[k].shape[1] for k in inputs
                                                                            if k.startswith("input_ids")))},
                  "probe_s": self.probe_seconds})

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.scored_logits_only and inputs.get("labels") is not None:
                inputs = scored_only(inputs)
                if model.training:  # the count is known on the host: the boolean index has sized shift_labels
                    self._scored = max(self._scored, inputs["shift_labels"].numel())
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

        def training_step(self, model, inputs, num_items_in_batch=None):
            for key in ("attention_mask", "attention_mask_b"):  # a bi-encoder's batch holds both sentences
                mask = inputs.get(key)
                if mask is not None:
                    self._tokens = self._tokens.to(mask.device) + mask.sum()
            b, s = inputs["input_ids"].shape[:2]
            if "input_ids_b" in inputs:  # a bi-encoder: the longer side (the planner traces both at that length)
                s = max(s, inputs["input_ids_b"].shape[1])
            self._samples += int(b)
            self.max_batch_shape = max(getattr(self, "max_batch_shape", (0, 0)), (int(s), int(b)))
            return super().training_step(model, inputs, num_items_in_batch)

        def evaluate(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return super().evaluate(*a, **kw)
            finally:
                self.eval_seconds += time.perf_counter() - t0

        def finish_counts(self):
            self.meter.tokens = int(self._tokens.item())
            self.meter.samples = self._samples
            s, b = getattr(self, "max_batch_shape", (0, 0))
            self.meter.longest_batch = {"batch_size": b, "seq_len": s}
            if self.scored_logits_only:  # the planner's loss buffers: logits at this many positions at most
                self.meter.longest_batch["scored_tokens"] = self._scored

    return HarnessTrainer, TimingCallback


def _nbytes(t) -> int:
    return t.untyped_storage().nbytes() if isinstance(t, torch.Tensor) else 0


def memory_breakdown(model, optimizer) -> dict:
    """Bytes held by category at one instant of training, read from the objects themselves: weights (parameters,
    buffers and bitsandbytes' quantization constants, each storage once), gradients, optimizer state. The rest of
    the measured peak is activations, temporaries and allocator overhead."""
    seen: set[int] = set()

    def once(t) -> int:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return 0
        key = t.untyped_storage().data_ptr()
        if key in seen or key == 0:
            return 0
        seen.add(key)
        return _nbytes(t)

    weights = sum(once(p) for p in model.parameters()) + sum(once(b) for b in model.buffers())
    for m in model.modules():
        qs = getattr(getattr(m, "weight", None), "quant_state", None)
        if qs is not None:
            weights += once(qs.absmax) + (once(qs.state2.absmax) + once(qs.state2.code) if qs.state2 is not None else 0)
        scb = getattr(getattr(m, "weight", None), "SCB", None)
        weights += once(scb)
    grads = sum(once(p.grad) for p in model.parameters() if p.grad is not None)
    opt = 0
    inner = getattr(optimizer, "optimizer", optimizer)
    for st in getattr(inner, "state", {}).values():
        for v in st.values():
            opt += once(v)
    mb = 2**20
    return {"weights_mb": weights / mb, "gradients_mb": grads / mb, "optimizer_state_mb": opt / mb,
            "when": "before the second optimizer step", "how": "bytes of the tensors each category holds"}


def make_compute_metrics(names: list[str], regression: bool, norm: tuple[float, float] | None = None):
    mean, std = norm or (0.0, 1.0)

    def compute(p):
        logits = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        if regression:  # back to the task's own scale
            return metric_fns.compute(names, np.asarray(logits).squeeze(-1) * std + mean,
                                      np.asarray(p.label_ids) * std + mean)
        return metric_fns.compute(names, np.asarray(logits).argmax(-1), p.label_ids)

    return compute


def make_trainer(model, tokenizer, train_ds, eval_sets: dict, cfg: Config, out_dir: str, *, dtype: torch.dtype, meter,
                 label_norm: tuple[float, float] | None = None, on_evaluate=None, callbacks=(), memory_window=None):
    """The Trainer every run trains with: bf16 autocast where `dtype` says so, batches padded to their longest
    example (rounded to train.pad_to_multiple_of) and grouped by length, loss logged ~25 times a run (each
    reading is a host sync), tokens counted without a sync per step. `callbacks` are added to ours."""
    from transformers import TrainingArguments

    t = cfg.train
    task = cfg.task
    regression = is_regression(task)
    causal = is_causal(task)
    train_steps = trains(cfg)
    on_cuda = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=out_dir,
        learning_rate=effective_lr(cfg),
        lr_scheduler_type=str(t.schedule),
        warmup_steps=float(t.warmup_ratio),
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        num_train_epochs=float(t.epochs),
        max_steps=int(t.max_steps) if train_steps else -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        gradient_accumulation_steps=t.grad_accum,
        optim=OPTIMIZERS[str(t.optimizer)],
        bf16=dtype == torch.bfloat16,
        # gradient checkpointing is set explicitly on the model (methods.apply), never by the Trainer
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        eval_strategy="steps" if t.eval_every > 0 else "no",
        eval_steps=t.eval_every if t.eval_every > 0 else None,
        save_strategy="no",  # checkpoints are asked for by _checkpoint_callback (train.save_every / save_every_min)
        save_total_limit=2,  # the newest two: the last complete one survives a kill while the next is written
        logging_strategy="steps",
        logging_steps=_logging_steps(len(train_ds), t),
        logging_nan_inf_filter=False,  # a NaN/inf loss must reach our divergence check
        report_to=[TRACKERS[n][1] for n in tracker_names(cfg)],  # train.report_to (harness/tracking.py)
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=not on_cuda,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        label_names=["labels"],
        prediction_loss_only=causal,  # never gather [batch, seq, vocab] logits: the loss is the eval metric
        disable_tqdm=True,
    )
    trainer_cls, timing_cls = _trainer_class()
    first_split = next(iter(eval_sets))
    eval_arg = eval_sets if len(eval_sets) > 1 else eval_sets[first_split]
    timing = timing_cls(meter, diverge_on_nan=t.stop_on_nonfinite_loss, on_evaluate=on_evaluate,
                        splits={s: None for s in eval_sets}, names=task.metrics)
    trainer = trainer_cls(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_arg,
        data_collator=make_collator(cfg, tokenizer),
        compute_metrics=None if causal else make_compute_metrics(list(task.metrics), regression, label_norm),
        callbacks=[timing, *callbacks],
        meter=meter,
        memory_window=memory_window if t.memory_probe else None,
        scored_logits_only=causal and t.scored_logits_only and accepts_logits_to_keep(model),
    )
    timing.trainer = trainer

    return trainer


CHECKPOINT_DONE = "harness_checkpoint.json"  # written last into a checkpoint: one without it is incomplete


def latest_checkpoint(root: Path | str | None) -> Path | None:
    """The last complete checkpoint (Trainer's checkpoint-<step>, with our marker) under `root`; a half-written one
    (killed while saving) has no marker and is passed over."""
    best = None
    for d in Path(root).glob("checkpoint-*") if root else ():
        try:
            step = int(d.name.split("-", 1)[1])
        except ValueError:
            continue
        if (d / CHECKPOINT_DONE).is_file() and (best is None or step > best[0]):
            best = (step, d)
    return best[1] if best else None


def _checkpoint_callback(every_steps: int, every_min: float):
    """Asks the Trainer to save every `every_steps` optimizer steps and/or `every_min` minutes (not at the last
    step: the run is about to be recorded), and marks each checkpoint complete once the Trainer has written it all
    (weights or adapter, optimizer, scheduler, RNG states, trainer state with the step and the loss log)."""
    from transformers import TrainerCallback

    from harness.records import write_json_atomic

    class CheckpointCallback(TrainerCallback):
        def __init__(self):
            self.last = time.monotonic()

        def on_step_end(self, args, state, control, **kw):
            if state.global_step >= state.max_steps:
                return
            due_steps = every_steps > 0 and state.global_step % every_steps == 0
            due_time = every_min > 0 and time.monotonic() - self.last >= every_min * 60
            if due_steps or due_time:
                # the loss since the last reading is logged first: a run resumed here then logs exactly what an
                # uninterrupted one does (otherwise the steps between that reading and the checkpoint are lost)
                control.should_log = True
                control.should_save = True

        def on_save(self, args, state, control, **kw):
            self.last = time.monotonic()
            if state.is_world_process_zero:
                d = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                write_json_atomic(d / CHECKPOINT_DONE, {"step": state.global_step, "max_steps": state.max_steps})

    return CheckpointCallback()


def train_and_evaluate(
    model,
    tokenizer,
    train_ds,
    eval_sets: dict,
    cfg,
    out_dir: str,
    *,
    dtype: torch.dtype,
    on_trained=None,
    label_norm: tuple[float, float] | None = None,
    final_evaluate=None,
    on_evaluate=None,
    predictions_dir: str | Path | None = None,
    memory_window=None,
    checkpoint_dir: Path | str | None = None,
) -> dict:
    """Train, evaluate every `train.eval_every` steps and at the end. Returns metrics, history, timings.

    `label_norm`: the (mean, std) the regression labels of `train_ds`/`eval_sets` were standardised with.
    Causal-LM tasks: batches are padded with `SFTCollator` (labels IGNORE on prompt and padding), evaluations
    during training report the held-out answer loss, and `final_evaluate()` -> {split: metrics} (generation,
    perplexity, multiple choice: harness/evaluate.py) gives the final numbers. train.max_steps=0 trains nothing.
    `on_evaluate(step, {split: {metric: value}})` is called after each evaluation during training (every
    `train.eval_every` steps); it may raise `Pruned` to stop the run (a search's pruner does).
    `predictions_dir`: where the final evaluation writes per-example predictions (`_evaluate_all`).
    `memory_window(covered)`: called when the window of exact memory closes (after the second optimizer step and
    a probe pass over the largest batch, `HarnessTrainer.memory_probe`; never with train.memory_probe=false).
    `checkpoint_dir` (train.save_every / save_every_min set): checkpoints are written there, and training resumes
    from the last complete one found there (`latest_checkpoint`); the result says from which step.
    """
    t = cfg.train
    task = cfg.task
    train_steps = trains(cfg)
    meter = Throughput(warmup_steps=t.warmup_steps_excluded)
    first_split = next(iter(eval_sets))
    saving = checkpoint_dir is not None and train_steps and (t.save_every > 0 or t.save_every_min > 0)
    trainer = make_trainer(model, tokenizer, train_ds, eval_sets, cfg, str(checkpoint_dir) if saving else out_dir,
                           dtype=dtype, meter=meter, label_norm=label_norm, on_evaluate=on_evaluate,
                           memory_window=memory_window,
                           callbacks=[_checkpoint_callback(t.save_every, t.save_every_min)] if saving else ())
    resume = latest_checkpoint(checkpoint_dir) if saving else None
    if resume is not None:
        log.info("resuming from %s (step %s)", resume, resume.name.split("-", 1)[1])

    t0 = time.perf_counter()
    train_out = trainer.train(resume_from_checkpoint=str(resume) if resume else None) if train_steps else None
    trainer.finish_counts()
    train_wall = time.perf_counter() - t0
    if on_trained is not None:  # e.g. read the memory high-water mark before the final evaluation
        on_trained()
    in_train_eval = trainer.eval_seconds
    # eval history from the Trainer's log (evaluations during training), then the final evaluation
    history: list[dict] = []
    for entry in trainer.state.log_history:
        ev = {k: v for k, v in entry.items() if k.startswith("eval_")}
        if any(k.endswith(tuple(task.metrics)) for k in ev):
            history.append({"step": entry.get("step"), "metrics": _strip(ev, eval_sets, task.metrics)})
    t1 = time.perf_counter()
    final = final_evaluate() if final_evaluate is not None else _evaluate_all(
        trainer, eval_sets, task.metrics, regression=is_regression(task), norm=label_norm, pred_dir=predictions_dir)
    eval_wall = time.perf_counter() - t1
    history.append({"step": trainer.state.global_step, "metrics": final})
    headline_split = first_split
    headline = task.metrics[0]
    sign = 1.0 if metric_fns.higher_is_better(headline) else -1.0
    scored = [h for h in history if headline in h["metrics"].get(headline_split, {})]
    best = max(scored, key=lambda h: sign * h["metrics"][headline_split][headline]) if scored else history[-1]
    logged = [e for e in trainer.state.log_history if "loss" in e]
    losses = [e["loss"] for e in logged]
    mean_loss = train_out.training_loss if train_out else None
    if resume is not None and logged:  # the Trainer's mean covers this process's steps only: weigh each reading
        steps = [int(e.get("step") or 0) for e in logged]  # by the steps it averages
        widths = [b - a for a, b in zip([0, *steps[:-1]], steps)]
        mean_loss = sum(x * w for x, w in zip(losses, widths)) / max(1, sum(widths))
    thr = meter.record(train_wall, in_train_eval, trainer.probe_seconds) if train_steps else None
    from harness.record import Metrics

    return {
        "optimizer": describe_optimizer(trainer.optimizer),
        "metrics": Metrics.of(
            headline={"split": headline_split, "metric": headline},
            final=final,
            best=best["metrics"],
            best_step=best["step"],
            history=history,
            train_loss={"first": losses[0] if losses else None, "last": losses[-1] if losses else None,
                        "mean": mean_loss, "log": losses, "nonfinite": sum(1 for x in losses if not math.isfinite(x))},
        ).as_dict(),
        "throughput": thr,
        "memory_breakdown": meter.breakdown,
        "times": {"train_s": train_wall, "final_eval_s": eval_wall},
        "steps": trainer.state.global_step,
        "resumed": None if resume is None else {"from_step": int(resume.name.split("-", 1)[1]),
                                                "checkpoint": str(resume)},
        "checkpoints": str(checkpoint_dir) if saving else None,
        "trainer": trainer,
    }


def make_collator(cfg: Config, tokenizer):
    """The collator a run trains with: batches padded to their longest example, rounded up to
    train.pad_to_multiple_of; causal-LM tasks with `SFTCollator` (labels IGNORE on padding)."""
    m = cfg.train.pad_to_multiple_of
    if is_bi_encoder(cfg.task):
        return PairCollator(tokenizer.pad_token_id or 0, m)
    if is_causal(cfg.task):
        from harness.lm import SFTCollator

        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return SFTCollator(pad, m)
    from transformers import DataCollatorWithPadding

    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=m)


class PairCollator:
    """A bi-encoder's batch: each side padded (right) to its own longest text, rounded up to `multiple`."""

    def __init__(self, pad_id: int, multiple: int = 8):
        self.pad_id, self.multiple = pad_id, multiple

    def _pad(self, seqs: list[list[int]], value: int) -> torch.Tensor:
        n = padded_length(max(len(x) for x in seqs), self.multiple)
        return torch.tensor([list(x) + [value] * (n - len(x)) for x in seqs], dtype=torch.long)

    def __call__(self, features: list[dict]) -> dict:
        out = {}
        for side in ("", "_b"):
            out["input_ids" + side] = self._pad([f["input_ids" + side] for f in features], self.pad_id)
            out["attention_mask" + side] = self._pad([f["attention_mask" + side] for f in features], 0)
        dtype = torch.float32 if isinstance(features[0]["labels"], float) else torch.long
        out["labels"] = torch.tensor([f["labels"] for f in features], dtype=dtype)
        return out


def describe_optimizer(opt) -> str:
    if opt is None:
        return None
    opt = getattr(opt, "optimizer", opt)  # accelerate wraps the optimizer
    name = f"{type(opt).__module__}.{type(opt).__name__}"
    bits = getattr(getattr(opt, "args", None), "optim_bits", None)
    if bits is not None:  # bitsandbytes: one class, 8/32-bit and paged by arguments
        name += f"(optim_bits={bits}, paged={bool(getattr(opt, 'is_paged', False))})"
    return name


def _logging_steps(n_train: int, t) -> int:
    """About 25 loss readings per run (each is a host sync, so not every step)."""
    per_epoch = math.ceil(n_train / (t.batch_size * t.grad_accum))
    total = t.max_steps if t.max_steps > 0 else math.ceil(per_epoch * t.epochs)
    return max(1, total // 25)


_EVAL_KEEP = ("loss",)


def _clean(metrics: dict, names) -> dict:
    return {k: v for k, v in metrics.items() if k in tuple(names) + _EVAL_KEEP}


def _strip(ev: dict, eval_sets: dict, names) -> dict:
    """Trainer's flat eval_<split>_<metric> keys -> {split: {metric: value}}."""
    out: dict = {}
    splits = list(eval_sets)
    for k, v in ev.items():
        key = k[len("eval_"):]
        split = next((s for s in splits if len(splits) > 1 and key.startswith(s + "_")), splits[0])
        metric = key[len(split) + 1:] if len(splits) > 1 else key
        out.setdefault(split, {})[metric] = v
    return {k: _clean(v, names) for k, v in out.items()}


def _evaluate_all(trainer, eval_sets: dict, names, *, regression: bool = False,
                  norm: tuple[float, float] | None = None, pred_dir: str | Path | None = None) -> dict:
    """{split: metrics}; with `pred_dir`, each split's per-example predictions go to <pred_dir>/<split>.jsonl
    ({"i", "pred", "gold"}: a class id, or a regression score on the task's own scale), in the eval set's order
    (the same for every run on that split), so two runs can be compared example by example (a paired bootstrap)."""
    out = {}
    for split, ds in eval_sets.items():
        if pred_dir is None:
            res = trainer.evaluate(ds, metric_key_prefix="eval")
        else:
            p = trainer.predict(ds, metric_key_prefix="eval")
            res = p.metrics
            write_predictions(Path(pred_dir) / f"{split}.jsonl", p.predictions, p.label_ids, regression, norm)
        out[split] = _clean({k[len("eval_"):]: v for k, v in res.items()}, names)
    return out


def write_predictions(path: Path, predictions, label_ids, regression: bool,
                      norm: tuple[float, float] | None = None) -> None:
    """Per-example predictions of a classifier (argmax class) or regressor (score, back on the task's scale)."""
    import json

    logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)
    gold = np.asarray(label_ids)
    if regression:
        mean, std = norm or (0.0, 1.0)
        pred = [float(x) * std + mean for x in logits.reshape(len(logits), -1)[:, 0]]
        gold_v = [float(x) * std + mean for x in gold]
    else:
        pred, gold_v = [int(x) for x in logits.argmax(-1)], [int(x) for x in gold]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for i, (a, b) in enumerate(zip(pred, gold_v)):
            f.write(json.dumps({"i": i, "pred": a, "gold": b}) + "\n")
    tmp.replace(path)
