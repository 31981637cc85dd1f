"""Merge a run's saved adapter into its base model:  python -m harness.merge RUN_DIR OUT_DIR

The base model is rebuilt as the run's record says and the adapter put on it (harness.eval.load_run); LoRA is then
folded into the weights (W + scale * B A, peft's merge_and_unload) and OUT_DIR gets a model that transformers loads
with no peft: a causal LM as it is (AutoModelForCausalLM), a classifier or bi-encoder as its backbone (AutoModel)
plus its task head in head.safetensors and how to use it in harness_head.json. The tokenizer is saved beside it.
A 4-bit or 8-bit base is dequantized first (bitsandbytes' own dequantization, as transformers' dequantize() does):
the merged weights are then 32-bit copies of the quantized values plus the update, not the original 16-bit ones,
and OUT_DIR/harness_head.json or merge.json says so. OUT_DIR must not exist yet (nothing is overwritten).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness.cli import key_value_args
from harness.eval import EvalError, load_run


def _dequantize(model) -> int:
    """Replace every bitsandbytes layer under `model` (inside peft's wrappers too) by an nn.Linear holding its
    dequantized weight; returns how many were replaced."""
    import torch
    from torch import nn

    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    n = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
                from peft.utils.integrations import dequantize_module_weight

                w = dequantize_module_weight(child).to(torch.float32)
                lin = nn.Linear(child.in_features, child.out_features, bias=child.bias is not None,
                                device=w.device, dtype=torch.float32)
                with torch.no_grad():
                    lin.weight.copy_(w)
                    if child.bias is not None:
                        lin.bias.copy_(child.bias.to(torch.float32))
                setattr(parent, name, lin)
                n += 1
    _plain_lora_wrappers(model)
    return n


def _plain_lora_wrappers(model) -> None:
    """peft wraps a bitsandbytes layer in its own bnb LoRA class, whose merge reads the 4-bit state; once the base
    is a plain nn.Linear it is peft's plain LoRA Linear (same attributes, merge W += scale B A)."""
    from torch import nn

    try:
        from peft.tuners.lora import layer as lora_layer
    except ImportError:
        return
    for m in model.modules():
        if (isinstance(m, lora_layer.LoraLayer) and type(m).__module__.endswith("lora.bnb")
                and type(m.get_base_layer()) is nn.Linear):
            m.__class__ = lora_layer.Linear
            m.fan_in_fan_out = getattr(m, "fan_in_fan_out", False)
            m.is_target_conv_1d_layer = getattr(m, "is_target_conv_1d_layer", False)


def _forget_quantization(pretrained) -> None:
    """A dequantized model is saved as a plain one: no quantization_config in its config.json (transformers would
    load the full-precision weights into 4-bit layers again)."""
    for m in pretrained.modules():
        cfg = getattr(m, "config", None)
        if cfg is not None and hasattr(cfg, "quantization_config"):
            delattr(cfg, "quantization_config")
        for attr, value in (("hf_quantizer", None), ("is_quantized", False), ("quantization_method", None)):
            if hasattr(m, attr):
                try:
                    setattr(m, attr, value)
                except AttributeError:  # a read-only property
                    pass


def merge(run_dir: str | Path, out_dir: str | Path) -> dict:
    """Write the merged model to `out_dir`; returns what merge.json says."""
    import torch
    from safetensors.torch import save_file

    from harness.config import is_causal
    from harness.models import HEAD_NAME

    out = Path(out_dir)
    if out.exists():
        raise EvalError(f"{out} exists: give a new directory (nothing is overwritten)")
    rec, cfg, model, tokenizer, _ = load_run(run_dir)
    dequantized = _dequantize(model)
    model = model.merge_and_unload()
    if dequantized:
        _forget_quantization(model)  # before .to(): transformers refuses to cast a model it holds as quantized
    model.to(torch.float32).eval()
    out.mkdir(parents=True)
    info = {"run": str(Path(run_dir).resolve()), "model": cfg.model.name, "method": cfg.method.name,
            "lora": (rec.get("method") or {}).get("lora"), "dequantized_layers": dequantized,
            "note": ("the base was quantized: the merged weights are its dequantized values plus the LoRA update, "
                     "not the original full-precision weights") if dequantized else None}
    if is_causal(cfg.task):
        model.save_pretrained(out)
        info["load_with"] = "transformers.AutoModelForCausalLM.from_pretrained(OUT_DIR)"
    else:
        model.backbone.save_pretrained(out)
        head = getattr(model, HEAD_NAME, None)
        if head is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()},
                      str(out / "head.safetensors"))
        info.update({"load_with": "transformers.AutoModel.from_pretrained(OUT_DIR) (the backbone) + head.safetensors",
                     "head": type(head).__name__ if head is not None else None,
                     "pooling": str(cfg.model.pooling),
                     "pair_encoding": str(cfg.task.pair_encoding),
                     "labels": list(cfg.task.labels)})
        (out / "harness_head.json").write_text(json.dumps(info, indent=2) + "\n")
    tokenizer.save_pretrained(out)
    (out / "merge.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.merge", description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    a = p.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), p))
    try:
        info = merge(a.run_dir, a.out_dir)
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"merged {info['model']} ({info['method']}) into {a.out_dir}: load with {info['load_with']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
