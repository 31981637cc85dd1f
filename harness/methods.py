"""Methods: full fine-tuning, LoRA, QLoRA (Int8 / FP4 / NF4, with or without double quantization).

- `bnb_config(method)`: the exact BitsAndBytesConfig a method loads its base model with (None for none).
- `target_modules(arch, targets, model)`: the papers' target names (q, k, v, o, combinations, all_linear)
  -> this architecture's module names, checked against the model.
- `apply(model, cfg)`: freeze / wrap with LoRA; the classifier head always trains in full.
- `count_parameters(model)`: trainable and total, quantized weights counted by their real element count.
Knows nothing of tasks.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from harness.config import ConfigError, Dtype, Quant, baseline_of, effective_alpha, effective_rank, target_letters, value_of
from harness.models import HEAD_NAME

if TYPE_CHECKING:
    from harness.config import Config

log = logging.getLogger(__name__)

# The papers' matrix names per architecture (module-name suffixes as peft matches them).
TARGETS: dict[str, dict[str, list[str]]] = {
    "bert": {"q": ["query"], "k": ["key"], "v": ["value"], "o": ["attention.output.dense"]},
    "roberta": {"q": ["query"], "k": ["key"], "v": ["value"], "o": ["attention.output.dense"]},
    "llama": {"q": ["q_proj"], "k": ["k_proj"], "v": ["v_proj"], "o": ["o_proj"]},
    "opt": {"q": ["q_proj"], "k": ["k_proj"], "v": ["v_proj"], "o": ["out_proj"]},
    # GPT-2 fuses Wq, Wk, Wv into one Conv1D (c_attn): q, k and v all adapt that fused matrix, as the
    # LoRA paper's GPT-2 code does; o is attn.c_proj.
    "gpt2": {"q": ["c_attn"], "k": ["c_attn"], "v": ["c_attn"], "o": ["attn.c_proj"]},
}
# Not adapted under all_linear: the head and BERT's pooler (unused by our pooling).
EXCLUDE_FROM_ALL_LINEAR = (HEAD_NAME, "pooler", "lm_head", "score", "classifier")


def base_dtype(method) -> torch.dtype:
    """The dtype unquantized base weights are loaded in (method.base_dtype: fp32, or bf16 as QLoRA's LoRA-BF16)."""
    s = str(method.base_dtype)
    return torch.bfloat16 if s == "bf16" else torch.float32


def compute_dtype(setting: Dtype | str) -> torch.dtype:
    """fp32 / bf16; 'auto' picks bf16 where it is the faster path: CUDA with bf16, CPUs with AMX or AVX512-BF16
    (host_has_bf16)."""
    s = str(setting)
    if s == "fp32":
        return torch.float32
    if s == "bf16":
        return torch.bfloat16
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if host_has_bf16() else torch.float32


def host_has_bf16(flags: str | None = None, isa: str | None = None, capability: str | None = None) -> bool:
    """Whether this CPU computes bf16 natively as torch runs it: AMX tiles (amx_bf16) or AVX512-BF16 dot products
    (avx512_bf16), with torch's kernels past AVX2 and oneDNN allowed those instructions. Measured on a 2-core AMD EPYC
    with avx512_bf16 and no AMX (conf/experiment/compute_dtype.yaml, reports/compute_dtype/): the default run in bf16
    autocast scored as in fp32 over 5 seeds (bf16 - fp32 +0.05 accuracy points, equivalent within 1: the 90% interval
    inside it); in six runs alternating the two (seeds 1-3) bf16 trained 1.72x, 1.51x and 0.93x as fast, and over the
    session's 12 bf16 and 8 fp32 runs the medians were 1,823 and 1,496 tokens/s (1.2x; bf16 spread more on this
    shared VM: 1,386-2,620 against 1,268-1,588). Not when ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA hold torch to AVX2
    (how an AVX2-only machine is emulated): bf16 is then emulated, many times slower. The arguments replace /proc/cpuinfo's flags,
    $ONEDNN_MAX_CPU_ISA and torch's CPU capability (tests)."""
    if flags is None:
        try:
            flags = open("/proc/cpuinfo").read()
        except OSError:
            return False
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL") if isa is None else isa).upper()
    capability = torch.backends.cpu.get_cpu_capability() if capability is None else capability
    if not capability.upper().startswith("AVX512"):
        return False
    words = set(flags.split())
    amx = "amx_bf16" in words and (isa == "ALL" or "AMX" in isa)
    dot = "avx512_bf16" in words and (isa == "ALL" or "BF16" in isa or "AMX" in isa)
    return amx or dot


def bnb_config(method, dtype: torch.dtype):
    """The BitsAndBytesConfig for a method, or None when the base stays unquantized."""
    quant = Quant(method.quant)
    if quant == Quant.none:
        return None
    from transformers import BitsAndBytesConfig

    if quant == Quant.int8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=[HEAD_NAME])
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.value,
        bnb_4bit_use_double_quant=bool(method.double_quant),
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage={"uint8": torch.uint8, "bf16": torch.bfloat16, "fp32": torch.float32}[method.storage_dtype],
    )


def describe_bnb(cfg) -> Optional[dict]:
    if cfg is None:
        return None
    d = cfg.to_dict()
    return {k: (str(v) if isinstance(v, torch.dtype) else v) for k, v in d.items()}


def _is_linear(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return True
    name = type(m).__name__
    return name in ("Linear4bit", "Linear8bitLt", "Conv1D")


def linear_module_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if _is_linear(m)]


def target_map(model_cfg) -> dict[str, list[str]]:
    """The model's matrix letter -> module-name suffixes: model.targets from its YAML, else its known arch's."""
    own = value_of(model_cfg, "targets")
    arch = str(value_of(model_cfg, "arch"))
    if own:
        return {k: list(v) for k, v in own.items()}
    if arch not in TARGETS:
        raise ConfigError(f"model.arch={arch!r} has no target mapping (known: {sorted(TARGETS)}); name the model's "
                          "projections in its YAML: model.targets, e.g. {q: [q_lin], k: [k_lin], v: [v_lin], "
                          "o: [out_lin]}, or use lora.targets=all_linear")
    return TARGETS[arch]


def target_modules(arch: str | dict, targets: str, model: nn.Module) -> list[str]:
    """Paper names -> module-name suffixes for peft, each checked to exist in `model`. `arch`: a known
    architecture's name, or a model's own letter -> suffixes map (target_map)."""
    linear = linear_module_names(model)
    letters = target_letters(targets)
    if letters == ["all_linear"]:
        names = sorted(
            {n for n in linear if not any(part in EXCLUDE_FROM_ALL_LINEAR for part in n.split("."))}
        )
        if not names:
            raise ConfigError("lora.targets=all_linear found no linear layers in the model")
        return names
    mapping = arch if isinstance(arch, dict) else target_map({"arch": arch})
    suffixes: list[str] = []
    for letter in letters:
        if letter not in mapping:
            raise ConfigError(f"lora.targets={targets!r}: this model maps no module to {letter!r} (its map: "
                              f"{mapping}); add it to model.targets or choose among {sorted(mapping)}")
        for s in mapping[letter]:
            if not any(n == s or n.endswith("." + s) for n in linear):
                leaves = sorted({n.split(".")[-1] for n in linear})
                where = f"for arch {arch!r}" if isinstance(arch, str) else "in model.targets"
                raise ConfigError(f"target {letter!r} maps to {s!r} {where}, but the model has no such linear "
                                  f"module; its linear modules are named: {leaves}")
            if s not in suffixes:
                suffixes.append(s)
    return suffixes


def _mapping(cfg: Config) -> str | dict:
    """What target_modules maps letters with: the model's own model.targets, else its arch's name (known arches'
    names appear in the error messages)."""
    return target_map(cfg.model) if cfg.model.targets else str(cfg.model.arch)


def check_targets(cfg: Config, model_path: Optional[str] = None) -> list[str]:
    """lora.targets against the model's structure on the meta device (nothing allocated, no weights read), before a
    run reads its data or loads its model: from `model.shape` in the model's YAML, else from the config file of
    the model folder `model_path`. Returns the module names LoRA will adapt; raises ConfigError naming the model's
    linear modules when a target does not exist."""
    from harness.config import is_bi_encoder, is_causal
    from harness.plan import hf_config, meta_model

    config = hf_config(cfg.model)
    if config is None:
        if model_path is None:
            return []
        from harness.models import _config

        config = _config(model_path, cfg.model)
    head = "lm" if is_causal(cfg.task) else ("bi_encoder" if is_bi_encoder(cfg.task) else "classifier")
    return target_modules(_mapping(cfg), cfg.lora.targets, meta_model(cfg, head, torch.float32, config))


def apply(model: nn.Module, cfg: Config, *, gradient_checkpointing: bool) -> nn.Module:
    """Freeze and wrap the model for the method. Returns the model to train."""
    method = cfg.method
    quantized = Quant(method.quant) != Quant.none
    if quantized:
        from peft import prepare_model_for_kbit_training

        # explicit: peft would otherwise turn gradient checkpointing on for QLoRA only
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_4bit_trainable(model)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not method.adapter:
        baseline = baseline_of(method)
        head_only = baseline == "head_only"
        bias_only = bool(method.bias_only)
        for name, p in model.named_parameters():  # full fine-tuning trains everything; a zero-shot baseline nothing
            p.requires_grad_(baseline == "none" and (not bias_only or name.endswith(".bias")))
        if bias_only and not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(f"method={method.name}: this model ({type(model).__name__}) has no bias terms to train "
                              "(Llama-architecture models have none); BitFit needs a model with biases (BERT, RoBERTa, "
                              "GPT-2)")
        # head only (a baseline: frozen backbone) and BitFit: the task head (or a bi-encoder's projection) trains too
        head = getattr(model, HEAD_NAME, None) if (bias_only or head_only) else None
        if head is None and head_only:
            raise ConfigError("method=head_only: this model has no task head to train")
        for p in head.parameters() if head is not None else ():
            p.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model

    lcfg = LoraConfig(
        r=effective_rank(cfg.lora),
        lora_alpha=effective_alpha(cfg.lora),
        lora_dropout=float(cfg.lora.dropout),
        target_modules=target_modules(_mapping(cfg), cfg.lora.targets, model),
        # the classifier's new head trains in full; a causal LM keeps its pretrained (often tied) LM head frozen
        modules_to_save=[HEAD_NAME] if hasattr(model, HEAD_NAME) else None,
        bias=cfg.lora.bias,
        use_rslora=bool(cfg.lora.use_rslora),
        use_dora=bool(cfg.lora.use_dora),
        init_lora_weights=PEFT_INIT[str(cfg.lora.init)],
    )
    return get_peft_model(model, lcfg)


# lora.init -> peft's init_lora_weights
PEFT_INIT = {"default": True, "gaussian": "gaussian", "pissa": "pissa", "olora": "olora"}


def keep_4bit_trainable(model: nn.Module) -> int:
    """bitsandbytes (0.49+) on a CPU with AVX512-BF16 repacks a Linear4bit's weight, in place and for good, into an
    inference-only layout the first time the layer runs in eval mode on an input without grad (any evaluation
    under no_grad). Training forwards after that go through a kernel autograd cannot see through: no gradient
    reaches the layers below (LoRA A/B there get none), and a layer with a bias fails. Evaluations during
    training (train.eval_every, a search's pruner, MMLU before training) would corrupt the rest of the run
    silently, so the repacking is switched off on every 4-bit layer. Returns the number of layers."""
    n = 0
    for m in model.modules():
        if hasattr(m, "support_avx512bf16_for_cpu"):
            m.support_avx512bf16_for_cpu = False
            n += 1
    return n


def _numel(p: torch.Tensor) -> int:
    """Element count of the weight a parameter stands for (bnb 4-bit packs two weights per byte)."""
    qs = getattr(p, "quant_state", None)
    if qs is not None and getattr(qs, "shape", None) is not None:
        return int(torch.Size(qs.shape).numel())
    return p.numel()


def count_parameters(model: nn.Module) -> dict:
    seen, trainable, total = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = _numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    # peft's modules_to_save keeps a frozen copy of the head beside the trained one: count the model once
    for name, m in model.named_modules():
        if type(m).__name__ == "ModulesToSaveWrapper":
            total -= sum(p.numel() for p in m.modules_to_save.parameters())
    return {"trainable": trainable, "total": total, "trainable_pct": 100.0 * trainable / max(total, 1)}


def adapter_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n and p.requires_grad)


def linear_storage(model: nn.Module) -> list[dict]:
    """Bytes held per linear layer of the base model, quantized (as `quantized_storage`) or not (its weight tensor):
    the layers QLoRA quantizes. Heads and adapters are left out (they stay in 16/32 bit)."""
    quant = {x["name"]: x for x in quantized_storage(model)}
    out = []
    for name, m in model.named_modules():
        if name in quant:
            out.append(quant[name])
        elif type(m) is nn.Linear and not any(p in EXCLUDE_FROM_ALL_LINEAR or p.startswith("lora_")
                                              for p in name.split(".")):
            w = m.weight
            out.append({"name": name, "quant": str(w.dtype).replace("torch.", ""), "double_quant": False,
                        "numel": w.numel(), "blocksize": None, "weight_bytes": w.numel() * w.element_size(),
                        "absmax_bytes": 0, "absmax2_bytes": 0, "per_tensor_bytes": 0,
                        "bits_per_param": 8.0 * w.element_size()})
    return out


def quantized_storage(model: nn.Module) -> list[dict]:
    """Per quantized linear layer, the bytes actually held: packed weights and quantization constants.

    4-bit (bitsandbytes Params4bit): packed uint8 weights (2 per byte), one absmax per block of 64; with
    double quantization the absmax are uint8 plus a second-level fp32 absmax per 256 blocks (the small
    per-tensor code book and offset are listed apart). Int8: int8 weights plus one fp32 scale per row.
    """
    out = []
    for name, m in model.named_modules():
        kind = type(m).__name__
        if kind == "Linear4bit":
            w = m.weight
            qs = w.quant_state
            numel = int(torch.Size(qs.shape).numel())
            weight_bytes = w.data.numel() * w.data.element_size()
            absmax_bytes = qs.absmax.numel() * qs.absmax.element_size()
            nested = qs.state2 is not None
            state2_bytes = qs.state2.absmax.numel() * qs.state2.absmax.element_size() if nested else 0
            per_tensor = 0
            if nested:
                per_tensor += qs.state2.code.numel() * qs.state2.code.element_size()
                per_tensor += torch.as_tensor(qs.offset).numel() * 4
            out.append({
                "name": name, "quant": qs.quant_type, "double_quant": nested, "numel": numel,
                "blocksize": qs.blocksize, "weight_bytes": weight_bytes, "absmax_bytes": absmax_bytes,
                "absmax2_bytes": state2_bytes, "per_tensor_bytes": per_tensor,
                "bits_per_param": 8 * (weight_bytes + absmax_bytes + state2_bytes) / numel,
            })
        elif kind == "Linear8bitLt":
            w = m.weight
            scb = getattr(w, "SCB", None)
            if scb is None:
                scb = getattr(m.state, "SCB", None)
            numel = w.numel()
            scale_bytes = 0 if scb is None else scb.numel() * scb.element_size()
            out.append({
                "name": name, "quant": "int8", "double_quant": False, "numel": numel, "blocksize": None,
                "weight_bytes": numel * w.element_size(), "absmax_bytes": scale_bytes, "absmax2_bytes": 0,
                "per_tensor_bytes": 0, "bits_per_param": 8 * (numel * w.element_size() + scale_bytes) / numel,
            })
    return out
