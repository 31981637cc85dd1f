"""Memory planner: where a fine-tuning run's memory goes, for any model, method and batch, from the model's shape
alone (no weights), with the arithmetic shown.

    python -m harness.plan model=llama2_70b                         # every method, the model's default recipe
    python -m harness.plan model=llama_65b lora.r=64 lora.targets=all_linear train.batch_size=1 train.max_seq_len=512
    python -m harness.plan model=smollm2_135m method=lora --json    # one method, machine-readable
    make plan MODEL=llama2_70b ARGS="train.gradient_checkpointing=true"

How each part is counted:
- The model is instantiated on PyTorch's meta device from its config (`model.shape` in conf/model/*.yaml: the
  Hugging Face config values), so parameter counts are exact and nothing is allocated. LoRA is applied with peft
  as in a run (same target names, same classifier head).
- Base weights by storage: linear layers of the base model in the method's format (4-bit: 2 weights per byte plus
  one fp32 absmax per block of 64; with double quantization the absmax are 8-bit plus one fp32 constant per 256
  blocks and a 256-entry code book per layer; Int8: 1 byte per weight plus one fp32 scale per output row), the rest
  (embeddings, norms, the LM head, biases) in the base dtype.
- Trainable parameters (LoRA A/B and the classifier head in fp32; every weight for full fine-tuning), their
  gradients (same dtype) and optimizer state (AdamW: 2 fp32 states; 8-bit AdamW: 2 bytes plus blockwise constants,
  32-bit for tensors under 4,096 elements, as bitsandbytes does; paged: the same bytes, evictable to CPU).
- Activations: the tensors autograd saves for the backward pass, counted by running the forward pass on the meta
  device under `saved_tensors_hooks` (unique storages, parameters excluded), in the compute dtype. Frozen
  quantized layers save their input like a trained layer does (bitsandbytes' matmul keeps it), so they are traced
  as trainable. With autocast over fp32 weights, each linear layer's 16-bit weight copy is kept for the backward
  pass (+2 bytes per unquantized linear weight). With gradient checkpointing: each layer's input is kept and one
  layer's activations are recomputed at a time.
- Loss buffers: the gradient of the fp32 logits (batch x sequence x vocabulary x 4 bytes) for language models.
- On CUDA the allocator's reserve and the CUDA context are extra; `--reserve-gb` (default 1.0) and 5% slack are
  added before checking whether a plan fits a GPU.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from harness import catalog

if TYPE_CHECKING:
    from harness.config import Config

GIB = 1024**3
GB = 1e9
MB = 1024**2
GPUS_GB = (24, 40, 48, 80)
BLOCK_4BIT = 64
BLOCK_DQ = 256
CODEBOOK_BYTES = 256 * 4 + 4  # DQ: a 256-entry fp32 code book and an fp32 offset per layer (bitsandbytes)
ADAM8_BLOCK = 256
ADAM8_MIN = 4096  # bitsandbytes keeps 32-bit state for tensors smaller than this
QUANT_SKIP = ("head", "lm_head")
# A training step's own working memory on CPU beyond the tensors counted (autograd's graph, oneDNN primitives and
# scratch buffers, the Trainer's loop): measured on this 2-core host by training a 2-layer 64-wide random BERT
# (7.8 MB of weights) for 4 steps with LoRA and with full fine-tuning at batch 8 and 32: measured peak minus the
# planned tensors = 44, 48, 45, 51 MB; the median is used. On CUDA the 1 GiB reserve plays this part.
CPU_FRAMEWORK_BYTES = 46 * 2**20
PHASE_PARTS = ("activations", "loss buffers", "gradients", "optimizer step temporaries", "autocast weight copies")
METHODS = tuple(catalog.fine_tuning_methods())  # every conf/method/ entry that trains a real storage type


@dataclass
class Plan:
    model: str
    method: str
    setting: dict
    params: dict  # total / trainable / quantized linear / other
    parts: dict  # name -> bytes
    notes: dict = field(default_factory=dict)  # name -> the arithmetic behind a part

    def _static(self, paged_out: bool = False) -> int:
        """Everything held through a whole step: weights, trainable copies, optimizer state (unless paged out)."""
        out = sum(v for k, v in self.parts.items() if k not in PHASE_PARTS)
        if paged_out and self.setting.get("optimizer", "").startswith("paged"):
            out -= self.parts.get("optimizer state", 0)
        return out

    def phases(self, paged_out: bool = False) -> dict:
        """The two moments a training step peaks: the start of the backward pass (every saved activation and the
        loss's buffers alive; the gradients grow as activations are freed, layer by layer, so the larger of the two)
        and the optimizer step (all gradients, plus the optimizer's temporaries)."""
        p, st = self.parts, self._static(paged_out)
        return {"backward": st + p.get("autocast weight copies", 0)
                + max(p.get("activations", 0) + p.get("loss buffers", 0), p.get("gradients", 0)),
                "optimizer step": st + p.get("gradients", 0) + p.get("optimizer step temporaries", 0)}

    @property
    def total(self) -> int:
        """The planned peak: the larger phase."""
        return int(max(self.phases().values()))

    @property
    def resident(self) -> int:
        """What must stay on the GPU: a paged optimizer's state can be evicted to CPU memory under pressure."""
        return int(max(self.phases(paged_out=True).values()))

    def fits(self, gpu_gb: float, reserve_gb: float = 1.0) -> bool:
        return self.resident * 1.05 + reserve_gb * GIB <= gpu_gb * 1e9

    def as_dict(self) -> dict:
        d = asdict(self)
        d["total"] = self.total
        d["resident"] = self.resident
        return d


# ============================================================================================ the model
def hf_config(model_cfg):
    """The Hugging Face config of a model from `model.shape` (no download); None if it has none."""
    from transformers import AutoConfig

    from harness.config import plain, value_of

    shape = value_of(model_cfg, "shape")
    if not shape:
        return None
    kw = dict(plain(shape))
    return AutoConfig.for_model(kw.pop("model_type"), **kw)


def meta_model(cfg: Config, head: str, dtype, config=None):
    """The run's model structure on the meta device (head: lm | classifier | bi_encoder): a causal LM, or backbone +
    our classifier head, or our bi-encoder. `config`: the Hugging Face config (default: from model.shape)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM

    from harness.config import baseline_of
    from harness.models import BiEncoder, SequenceClassifier

    config = config if config is not None else hf_config(cfg.model)
    if config is None:
        from harness.config import ConfigError

        raise ConfigError(f"model {cfg.model.name!r} has no `shape` (its Hugging Face config values) in "
                          "conf/model/; the planner needs one")
    from harness.attention import implementation

    # sdpa_cpu: transformers' sdpa off the CPU; on it, fp32 attention and explicit dropout
    attn = implementation(getattr(cfg.model, "attn_implementation", None), _setting(cfg, "device", "cuda"))
    if attn:  # the kernel the run takes (eager keeps every [batch, heads, seq, seq] probability for the backward)
        config._attn_implementation = str(attn)
    with torch.device("meta"):
        if head == "lm":
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        else:
            backbone = AutoModel.from_config(config, dtype=dtype)
            num_labels = 1 if str(cfg.task.kind) == "regression" else max(
                2, len(cfg.task.labels))
            pooling = str(cfg.model.pooling)
            if head == "bi_encoder":
                model = BiEncoder(backbone, config.hidden_size, num_labels, pooling,
                                  projection=baseline_of(cfg.method) == "head_only")
            else:
                model = SequenceClassifier(backbone, config.hidden_size, num_labels, pooling)
            if getattr(model, "head", None) is not None:
                model.head.to(torch.float32)
    return model


def _linear_weights(model, skip: tuple[str, ...]) -> dict[str, tuple[int, int]]:
    """name -> (in, out) of the base model's linear layers a quantizer converts."""
    from torch import nn

    out = {}
    for name, m in model.named_modules():
        if type(m) is nn.Linear and not any(p in skip or p.startswith("lora_") for p in name.split(".")):
            out[name] = (m.in_features, m.out_features)
    return out


def quantized_bytes(shape: tuple[int, int], quant: str, double_quant: bool) -> dict:
    """Bytes one linear layer holds when quantized by bitsandbytes (weights, constants), as methods.quantized_storage
    reads them from a loaded model."""
    n_in, n_out = shape
    numel = n_in * n_out
    if quant == "int8":
        return {"weight": numel, "constants": n_out * 4, "code": 0}
    blocks = math.ceil(numel / BLOCK_4BIT)
    weight = math.ceil(numel / 2)
    if double_quant:
        return {"weight": weight, "constants": blocks + math.ceil(blocks / BLOCK_DQ) * 4, "code": CODEBOOK_BYTES}
    return {"weight": weight, "constants": blocks * 4, "code": 0}


# ============================================================================================ activations
def _autocast_mode(dtype, quantized: set[int], excluded: set[int], params: set[int], weight_casts: set[int]):
    """Autocast on the meta device (which torch.autocast does not cover): matmul-like ops cast their floating
    inputs to `dtype`, every other op follows type promotion, as autocast on CPU and CUDA does. A cast of a
    quantized layer's weight is not kept (bitsandbytes dequantizes it again in the backward pass)."""
    import torch
    import torch.nn.functional as F
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_map

    lowp = {F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.Tensor.matmul,
            torch.Tensor.__matmul__, F.scaled_dot_product_attention, torch.einsum}
    # the casts whose storages are recorded, held for the whole trace: a cast autograd does not save (a frozen
    # weight whose input needs no gradient) is freed at once, and a later saved activation could take its storage's
    # address and be counted as that cast (the plan then moved by ~0.1 MB from one call to the next in a process)
    held = []

    class Autocast(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            # torch.autocast("cpu") is entered around the trace (meta tensors ignore it) so that a region the model
            # runs with autocast off (harness/attention.py's fp32 attention) is traced without casts, as it runs
            if func in lowp and torch.is_autocast_enabled("cpu"):
                def cast(t):
                    if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype != dtype:
                        out = t.to(dtype)
                        key = t.untyped_storage()._cdata
                        if key in quantized:
                            excluded.add(out.untyped_storage()._cdata)
                            held.append(out)
                        elif key in params:  # a 16-bit copy of a weight: fixed, whatever the batch
                            weight_casts.add(out.untyped_storage()._cdata)
                            held.append(out)
                        return out
                    return t

                args, kwargs = tree_map(cast, args), tree_map(cast, kwargs)
            return func(*args, **kwargs)

    return Autocast()


def trace_activations(model, batch: int, seq: int, head: str, compute=None, quantized: set[int] = frozenset(),
                      scored: int | None = None) -> dict:
    """Bytes of the tensors autograd saves in one forward pass (meta device, nothing allocated), split into the
    transformer layers' share and the rest. `compute`: the autocast dtype (None: no autocast); `quantized`: storages
    of the weights a quantizer holds (their 16-bit casts are not kept); `scored` (an LM): the output layer runs at
    this many positions (train.scored_logits_only), traced as the last ceil(scored / batch) of each sequence (a meta
    tensor cannot be masked: at most batch - 1 positions more)."""
    import contextlib

    import torch

    params = {p.untyped_storage()._cdata for p in model.parameters()}
    params |= {b.untyped_storage()._cdata for b in model.buffers()}
    excluded: set[int] = set()
    weight_casts: set[int] = set()
    seen: dict[int, tuple[int, bool]] = {}
    state = {"in_layer": 0}
    layers = _layer_list(model)
    hooks = []
    for layer in layers:
        hooks.append(layer.register_forward_pre_hook(lambda m, a: state.__setitem__("in_layer", state["in_layer"] + 1)))
        hooks.append(layer.register_forward_hook(lambda m, a, o: state.__setitem__("in_layer", state["in_layer"] - 1)))

    def pack(t):
        key = t.untyped_storage()._cdata
        if key not in params and key not in seen and key not in excluded:
            seen[key] = (t.untyped_storage().nbytes(), state["in_layer"] > 0)
        return t

    ids = torch.zeros(batch, seq, dtype=torch.long, device="meta")
    mask = torch.ones(batch, seq, dtype=torch.long, device="meta")
    kw = {"input_ids": ids, "attention_mask": mask}
    kw["labels"] = ids if head == "lm" else torch.zeros(batch, dtype=torch.long, device="meta")
    if head == "lm" and scored is not None:
        keep = max(1, min(seq, -(-int(scored) // batch)))
        kw.update(logits_to_keep=keep, labels=ids[:, :keep])
    if head == "bi_encoder":  # both sentences of each pair, each as long as the longest side
        kw.update(input_ids_b=ids, attention_mask_b=mask)
        if model.num_labels == 1:
            kw["labels"] = torch.zeros(batch, dtype=torch.float32, device="meta")
    from unittest import mock

    import transformers.masking_utils as mu

    sdpa = torch.nn.functional.scaled_dot_product_attention

    def fused_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """Attention without dropout runs as a fused kernel in a run (flash attention on CPU, flash or memory-
        efficient on CUDA), which saves its output and one log-sum-exp per row for the backward pass, not the
        [batch, heads, seq, seq] probabilities that the math path a meta tensor would take saves (SmolLM2 at 16 x
        224 tokens: 0.9 GB); with dropout (MiniLM's attention in training) a run takes the math path too."""
        if dropout_p:
            return sdpa(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale,
                        enable_gqa=enable_gqa)
        if enable_gqa and key.shape[-3] != query.shape[-3]:
            rep = query.shape[-3] // key.shape[-3]
            key, value = key.repeat_interleave(rep, -3), value.repeat_interleave(rep, -3)
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale)[0]

    try:
        # a mask of ones lets attention skip the mask (as a batch without padding does); transformers checks that
        # with .item(), which a meta tensor cannot answer
        with mock.patch.object(mu, "fast_all", lambda t: True), \
                mock.patch.object(mu, "_ignore_bidirectional_mask_sdpa", lambda *a, **k: True), \
                mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", fused_sdpa), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                (_autocast_mode(compute, quantized, excluded, params, weight_casts) if compute is not None
                 else contextlib.nullcontext()), \
                (torch.autocast("cpu", dtype=compute) if compute is not None else contextlib.nullcontext()):
            model(**kw)
    finally:
        for h in hooks:
            h.remove()
    copies = sum(b for k, (b, _) in seen.items() if k in weight_casts)
    in_layers = sum(b for k, (b, inside) in seen.items() if inside and k not in weight_casts)
    outside = sum(b for k, (b, inside) in seen.items() if not inside and k not in weight_casts)
    return {"layers": in_layers, "outside": outside, "n_layers": len(layers), "weight_copies": copies}


def _layer_list(model):
    from torch import nn

    best = None
    for _, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) and (best is None or len(m) > len(best)):
            best = m
    return list(best or [])


# ============================================================================================ the plan
def plan(cfg: Config, scored_tokens: int | None = None) -> Plan:
    """The memory plan of the run `cfg` describes (plan.device: cuda|cpu picks the compute dtype for `auto`;
    plan.lora_dtype: fp32|bf16; config.PlanConfig). `scored_tokens` (a causal LM with train.scored_logits_only): the
    positions the output layer runs at in the largest batch, as a record keeps them; unknown (None), every position
    of the batch, the most it can be."""
    import dataclasses

    import torch

    from harness import methods
    from harness.config import Quant, effective_rank, is_bi_encoder, is_causal

    m = cfg.method
    quant = str(m.quant)
    adapter = bool(m.adapter)
    head = "lm" if is_causal(cfg.task) else "bi_encoder" if is_bi_encoder(cfg.task) else "classifier"
    compute = methods.compute_dtype(m.compute_dtype) if str(m.compute_dtype) != "auto" \
        else (torch.bfloat16 if _setting(cfg, "device", "cuda") == "cuda" else methods.compute_dtype("auto"))
    base = methods.base_dtype(m)
    b, s = int(cfg.train.batch_size), int(cfg.train.max_seq_len)
    ckpt = bool(cfg.train.gradient_checkpointing)
    optim = str(cfg.train.optimizer)

    # --- structure and parameters (in the base dtype; quantized layers are re-counted below)
    model = meta_model(cfg, head, base)
    # bitsandbytes (through transformers) converts every linear layer of the base model but the LM's output
    # layer; our classifier head is outside the quantized backbone
    linear = _linear_weights(model, QUANT_SKIP) if quant != "none" else {}
    # what trains, as in a run: LoRA A/B and the head, every weight (full), or the head only (head_only baseline)
    lcfg = dataclasses.replace(cfg, method=dataclasses.replace(cfg.method, quant=Quant.none, double_quant=False))
    model = methods.apply(model, lcfg, gradient_checkpointing=False)
    counted = methods.count_parameters(model)
    q_names = {n + ".weight" for n in linear}
    parts, notes = {}, {}
    q_params = sum(i * o for i, o in linear.values())
    qb = {"weight": 0, "constants": 0, "code": 0}
    for shape in linear.values():
        for k, v in quantized_bytes(shape, quant, bool(m.double_quant)).items():
            qb[k] += v
    seen, other, trainable, trainable_list = set(), 0, 0, []
    for name, p in model.named_parameters():
        key = p.untyped_storage()._cdata
        clean = _base_name(name)
        if key in seen:
            continue
        seen.add(key)
        if p.requires_grad:
            trainable += p.numel()
            trainable_list.append(p.numel())
        if clean in q_names and not p.requires_grad:
            continue
        if "modules_to_save" in name or "original_module" in name or "lora_" in name or p.requires_grad:
            if adapter:
                continue  # counted as trainable below (LoRA and the head are fp32)
        other += p.numel() * p.element_size()
    if quant != "none":
        parts["base weights: quantized linear layers"] = qb["weight"]
        parts["base weights: quantization constants"] = qb["constants"] + qb["code"]
        bits = 8 * (qb["weight"] + qb["constants"]) / max(q_params, 1)
        notes["base weights: quantized linear layers"] = (
            f"{q_params:,} weights in {len(linear)} linear layers x "
            f"{'1 byte' if quant == 'int8' else '0.5 byte'} = {qb['weight'] / GIB:.3f} GiB")
        notes["base weights: quantization constants"] = (
            ("one fp32 scale per output row" if quant == "int8" else
             f"{'8-bit absmax per 64 weights + fp32 per 256 blocks + code book' if m.double_quant else 'fp32 absmax per 64 weights'}")
            + f" -> {bits:.3f} bits per weight in all")
    parts["base weights: kept in " + str(base).replace("torch.", "")] = other
    notes["base weights: kept in " + str(base).replace("torch.", "")] = (
        "embeddings, norms, LM head, biases" + ("" if quant != "none" else " and every linear layer")
        + (" (full fine-tuning: trained)" if not adapter else ""))
    # peft keeps LoRA weights in fp32 (autocast_adapter_dtype); the QLoRA paper's code keeps them in bf16
    lora_bytes = 2 if _setting(cfg, "lora_dtype", "fp32") == "bf16" else 4
    t_bytes = lora_bytes if adapter else base.itemsize
    if adapter:
        parts["trainable: LoRA and head"] = trainable * lora_bytes
        notes["trainable: LoRA and head"] = (f"{trainable:,} parameters x {lora_bytes} bytes "
                                             f"(r={effective_rank(cfg.lora)}, targets {cfg.lora.targets})")
    parts["gradients"] = trainable * t_bytes
    notes["gradients"] = f"{trainable:,} x {t_bytes} bytes"
    parts["optimizer state"], notes["optimizer state"] = _optimizer_bytes(optim, trainable_list)
    if optim == "adamw" and trainable_list:
        # torch's AdamW: on CUDA the foreach implementation makes one fp32 temporary per parameter (the square root
        # of exp_avg_sq); on CPU the per-tensor loop, one for the largest tensor. bitsandbytes' optimizers are fused.
        on_cuda = _setting(cfg, "device", "cuda") == "cuda"
        tmp = 4 * (sum(trainable_list) if on_cuda else max(trainable_list))
        parts["optimizer step temporaries"] = tmp
        notes["optimizer step temporaries"] = ("AdamW foreach: sqrt(exp_avg_sq) for every parameter" if on_cuda else
                                               "AdamW per tensor: sqrt(exp_avg_sq) of the largest tensor") + \
            f" x 4 bytes = {tmp / MB:.1f} MB"

    # --- activations: a traced forward pass on the meta device, under emulated autocast
    # quantized frozen layers save their input (bitsandbytes' matmul does): trace them as trainable
    qkeys = set()
    for n, p in model.named_parameters():
        if _base_name(n) in q_names:
            p.requires_grad_(True)
            qkeys.add(p.untyped_storage()._cdata)
    amp = compute if compute != base else None
    scored = None
    if head == "lm" and cfg.train.scored_logits_only and scored_tokens is not None:
        scored = min(int(scored_tokens), b * s)
    per = trace_activations(model, b, s, head, amp, qkeys, scored)
    if ckpt:
        per_layer = per["layers"] / max(per["n_layers"], 1)
        hidden = _hidden(cfg)
        kept = per["n_layers"] * b * s * hidden * base.itemsize
        acts = per["outside"] + kept + per_layer
        notes["activations"] = (f"gradient checkpointing: {per['n_layers']} layer inputs ({b}x{s}x{hidden}) kept "
                                f"= {kept / MB:.0f} MB, one layer recomputed ({per_layer / MB:.0f} MB), outside "
                                f"the layers {per['outside'] / MB:.0f} MB")
    else:
        acts = per["layers"] + per["outside"]
        notes["activations"] = (f"saved for backward, traced: {per['layers'] / MB:.0f} MB in {per['n_layers']} "
                                f"layers ({per['layers'] / max(per['n_layers'], 1) / MB:.1f} MB each at batch {b} x "
                                f"{s} tokens) + {per['outside'] / MB:.0f} MB outside them (embeddings, head, loss)"
                                + (f"; autocast to {str(amp)[6:]} emulated" if amp is not None else ""))
    parts["activations"] = acts
    if per["weight_copies"]:
        parts["autocast weight copies"] = per["weight_copies"]
        notes["autocast weight copies"] = ("16-bit copies of the fp32 weights autocast casts and keeps for the "
                                           "backward pass (quantized layers dequantize again instead)")
    if _setting(cfg, "device", "cuda") == "cpu":
        parts["framework working memory (CPU)"] = CPU_FRAMEWORK_BYTES
        notes["framework working memory (CPU)"] = "measured constant (plan.CPU_FRAMEWORK_BYTES)"
    if head == "lm":
        vocab = int(hf_config(cfg.model).vocab_size)
        if scored is not None:
            parts["loss buffers"] = scored * vocab * 4
            notes["loss buffers"] = (f"gradient of the fp32 logits at the {scored:,} scored positions (the run's "
                                     f"largest count; train.scored_logits_only) x {vocab:,} x 4 bytes")
        else:
            parts["loss buffers"] = b * s * vocab * 4
            notes["loss buffers"] = (f"gradient of the fp32 logits: {b} x {s} x {vocab:,} x 4 bytes"
                                     + (" (at most: with train.scored_logits_only only the answer's positions are "
                                        "computed, known once a run has counted them)"
                                        if cfg.train.scored_logits_only else ""))
    return Plan(model=cfg.model.name, method=m.name,
                setting={"batch_size": b, "max_seq_len": s, "gradient_checkpointing": ckpt, "optimizer": optim,
                         "r": effective_rank(cfg.lora) if adapter else None,
                         "targets": cfg.lora.targets if adapter else None, "compute_dtype": str(compute)[6:],
                         "base_dtype": str(base)[6:], "head": head},
                params={"total": counted["total"], "trainable": trainable, "quantized_linear": q_params},
                parts={k: int(v) for k, v in parts.items()}, notes=notes)


def _base_name(name: str) -> str:
    """A parameter's name in the base model (without peft's wrapping)."""
    return name.replace("base_model.model.", "").replace(".base_layer", "")


def _hidden(cfg: Config) -> int:
    c = hf_config(cfg.model)
    return int(getattr(c, "hidden_size", None) or getattr(c, "n_embd"))


def _optimizer_bytes(optim: str, sizes: list[int]) -> tuple[int, str]:
    n = sum(sizes)
    if optim in ("adamw", "adamw_fused", "paged_adamw"):
        paged = " (paged: evictable to CPU memory under pressure)" if optim.startswith("paged") else ""
        return 8 * n, f"AdamW: 2 fp32 states x {n:,} = 8 bytes per trainable parameter{paged}"
    big = sum(x for x in sizes if x >= ADAM8_MIN)
    small = n - big
    b = 2 * big + 2 * 4 * math.ceil(big / ADAM8_BLOCK) + 8 * small
    return b, (f"8-bit AdamW: 2 bytes per parameter + fp32 constants per {ADAM8_BLOCK} for {big:,} parameters; "
               f"32-bit state for {small:,} in tensors under {ADAM8_MIN:,} elements")


def _setting(cfg: Config, key: str, default: str) -> str:
    """plan.<key> of a config (unset: the default)."""
    return str(getattr(cfg.plan, key, None) or default)


def plan_at(cfg: Config | dict, longest: dict | None, device: str) -> Plan:
    """The plan of a run's config (typed, or a record's stored dict) at its longest batch ({batch_size, seq_len} and,
    for an LM that computed logits only where its loss reads them, scored_tokens, as its record keeps it), on
    `device`."""
    import dataclasses

    from harness.config import PlanConfig, from_record

    cfg = from_record(cfg) if isinstance(cfg, dict) else cfg
    longest = longest or {}
    train = dataclasses.replace(cfg.train, batch_size=longest.get("batch_size") or cfg.train.batch_size,
                                max_seq_len=longest.get("seq_len") or cfg.train.max_seq_len)
    if longest and "scored_tokens" not in longest:  # a run that counted none computed logits at every position
        train = dataclasses.replace(train, scored_logits_only=False)
    return plan(dataclasses.replace(cfg, train=train, plan=PlanConfig(device=device,
                                                                      lora_dtype=_setting(cfg, "lora_dtype", "fp32"))),
                scored_tokens=longest.get("scored_tokens"))


def plan_for_record(rec: dict) -> Plan:
    """The plan of a recorded run at its longest batch (its config is in the record), on the device it ran on, in
    the dtype it computed in (the record's method.compute_dtype): `auto` in its config means what it meant on the
    machine that ran it, not on the one planning now (since auto takes bf16 on AVX512-BF16 CPUs, a report rendered
    there planned an AVX2 machine's fp32 runs in bf16)."""
    cfg = rec["config"]
    ran = {"float32": "fp32", "bfloat16": "bf16"}.get((rec.get("method") or {}).get("compute_dtype"))
    if ran and isinstance(cfg, dict):
        cfg = {**cfg, "method": {**cfg["method"], "compute_dtype": ran}}
    return plan_at(cfg, (rec.get("throughput") or {}).get("longest_batch"), (rec.get("host") or {}).get("device", "cpu"))


def compose_plan_config(overrides: list[str], method: str | None = None, device: str = "cuda",
                        lora_dtype: str = "fp32"):
    """The run config for these overrides (a decoder without a named task is planned for instruction tuning)."""

    from harness.config import compose, is_causal, model_kind

    ovr = [o for o in overrides if not (method and o.startswith("method="))] + ([f"method={method}"] if method else [])
    cfg = compose(ovr)
    if not is_causal(cfg.task) and model_kind(cfg.model) == "decoder" and not any(
            o.startswith("task=") for o in ovr):
        cfg = compose(ovr + ["task=alpaca"])
    cfg.plan.device = device
    cfg.plan.lora_dtype = lora_dtype
    return cfg


def make_plan(overrides: list[str], method: str | None = None, **kw) -> Plan:
    """plan() of the run `python -m harness.run <overrides> [method=<method>]` would be."""
    return plan(compose_plan_config(overrides, method, **kw))


BATCH_PARTS = ("activations", "loss buffers")  # the parts that grow with the batch (linearly: every saved tensor
# and the logits are per sequence); everything else is fixed


def largest_batch(p: Plan, gpu_gb: float, reserve_gb: float = 1.0) -> int:
    """The largest batch size that fits at the plan's sequence length (0: not even one sequence)."""
    avail = (gpu_gb * 1e9 - reserve_gb * GIB) / 1.05
    if p.phases(paged_out=True)["optimizer step"] > avail:
        return 0
    per_seq = sum(p.parts.get(k, 0) for k in BATCH_PARTS) / max(p.setting["batch_size"], 1)
    room = avail - p._static(paged_out=True) - p.parts.get("autocast weight copies", 0)
    if per_seq <= 0:
        return 10**6
    return int(room // per_seq) if room >= per_seq else 0


# ============================================================================================ printing
def fmt_gb(n: float) -> str:
    return f"{n / GIB:.2f}"


def table(plans: list[Plan], gpus=GPUS_GB, reserve_gb: float = 1.0, batches: dict | None = None) -> str:
    parts = []
    for p in plans:
        for k in p.parts:
            if k not in parts:
                parts.append(k)
    head = ["part (GiB)"] + [p.method for p in plans]
    rows = [[k] + [fmt_gb(p.parts.get(k, 0)) if k in p.parts else "-" for p in plans] for k in parts]
    rows.append(["peak at the start of the backward pass"] + [fmt_gb(p.phases()["backward"]) for p in plans])
    rows.append(["peak at the optimizer step"] + [fmt_gb(p.phases()["optimizer step"]) for p in plans])
    rows.append(["**total (the larger)**"] + [f"**{fmt_gb(p.total)}**" for p in plans])
    if any(p.resident != p.total for p in plans):
        rows.append(["on the GPU (paged optimizer state evictable)"] + [fmt_gb(p.resident) for p in plans])
    rows.append(["trainable parameters"] + [f"{p.params['trainable']:,}" for p in plans])
    for g in gpus:
        cells = []
        for p in plans:
            ok = p.fits(g, reserve_gb)
            mb = (batches or {}).get((p.method, g))
            cells.append(("yes" if ok else "no") + (f", batch <= {mb}" if mb is not None else ""))
        rows.append([f"fits {g} GB"] + cells)
    w = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w[i]) for i, c in enumerate(r)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (x + 2) for x in w) + "|"] + [line(r) for r in rows])


USAGE = "usage: python -m harness.plan model=NAME [method=NAME] [plan.device=cuda|cpu] [plan.lora_dtype=fp32|bf16] " \
        "[run overrides ...] [all_methods=true] [json=true] [gpus=24,40,48,80] [reserve_gb=1.0] [batch=false] " \
        "(the --all-methods, --json, --gpus, --reserve-gb, --no-batch, --device and --lora-dtype spellings work too)"


def _lora_dtype(v: str) -> str:
    if v not in ("fp32", "bf16"):
        raise argparse.ArgumentTypeError(f"{v!r} is not valid; valid: fp32, bf16")
    return v


def _gpus(v: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in v.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{v!r} is not valid: give GPU memory sizes in GB, e.g. 24,40,80") from None


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.plan", usage=USAGE.removeprefix("usage: "), description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--json", action="store_true", help="print the plans as JSON")
    ap.add_argument("--all-methods", action="store_true", help="every method even when method= is given")
    ap.add_argument("--no-batch", action="store_true", help="leave out the largest batch that fits each GPU size")
    ap.add_argument("--gpus", type=_gpus, default=GPUS_GB, help="GPU memory sizes in GB (default %(default)s)")
    ap.add_argument("--reserve-gb", type=float, default=1.0, help="GB kept free on each GPU (default 1.0)")
    ap.add_argument("--device", default="cuda", help="cuda or cpu (= plan.device)")
    ap.add_argument("--lora-dtype", type=_lora_dtype, default="fp32", help="fp32 or bf16 (= plan.lora_dtype)")
    return ap


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    logging.disable(logging.WARNING)
    warnings.filterwarnings("ignore")
    from harness.cli import options_and_overrides
    from harness.config import validate_plan

    args, ovr = options_and_overrides(_parser(), list(sys.argv[1:] if argv is None else argv))
    opts = {"json": args.json, "gpus": args.gpus, "reserve": args.reserve_gb, "all": args.all_methods or None,
            "batch": not args.no_batch, "device": args.device, "lora_dtype": args.lora_dtype}
    # plan.device= / plan.lora_dtype= (the schema's PlanConfig) as the command line's other overrides; the flags
    # above say the same
    for o in ovr:
        if o.startswith("plan.device="):
            opts["device"] = o.split("=", 1)[1]
        elif o.startswith("plan.lora_dtype="):
            opts["lora_dtype"] = o.split("=", 1)[1]
    ovr = [o for o in ovr if not o.startswith(("plan.device=", "plan.lora_dtype="))]
    one = any(o.startswith("method=") for o in ovr) and not opts["all"]
    names = [None] if one else list(METHODS)
    try:
        cfgs = [compose_plan_config(ovr, n, opts["device"], opts["lora_dtype"]) for n in names]
        validate_plan(cfgs[0])  # harness.config's check
        plans = [plan(c) for c in cfgs]
    except Exception as e:  # a bad override or a model without a shape
        print(f"error: {e}", file=sys.stderr)
        return 2
    cfg = cfgs[0]
    batches = {}
    if opts["batch"]:
        for p in plans:
            for g in opts["gpus"]:
                batches[(p.method, g)] = largest_batch(p, g, opts["reserve"])
    if opts["json"]:
        print(json.dumps([{**p.as_dict(), "largest_batch": {str(g): batches.get((p.method, g)) for g in opts["gpus"]}}
                          for p in plans], indent=2))
        return 0
    s = plans[0].setting
    print(f"# {cfg.model.name}: {plans[0].params['total']:,} parameters; batch {s['batch_size']} x {s['max_seq_len']} "
          f"tokens, {s['head']} head, gradient checkpointing {'on' if s['gradient_checkpointing'] else 'off'}, "
          f"optimizer {s['optimizer']}, LoRA r={cfg.lora.r} on {cfg.lora.targets}, compute {s['compute_dtype']}\n")
    print(table(plans, opts["gpus"], opts["reserve"], batches))
    print(f"\nFits = total x 1.05 + {opts['reserve']} GiB (CUDA context, allocator) <= the GPU's memory; "
          "'batch <=' is the largest batch size that fits at this sequence length.\n")
    for p in plans:
        print(f"## {p.method}")
        for k, v in p.notes.items():
            print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
