"""`model.attn_implementation=sdpa_cpu` (the default): transformers' sdpa attention, made quicker for training on
the CPU. Registered with transformers' AttentionInterface (and its mask interface, as sdpa's masks) by `register()`.

On the CPU (and on the meta device, where the memory planner traces a CPU run):
- Without dropout, scaled_dot_product_attention runs in fp32: under bf16 autocast (or in a bf16 model) query, key
  and value are cast up and the output back. torch's CPU flash-attention backward is slow in bf16: for one SmolLM2
  layer (8 x 95 tokens, 9 heads of 64, 3 key/value heads) 7.8 ms against 3.6 ms in fp32, on a 2-core AMD EPYC with
  AVX512-BF16; SmolLM2 LoRA trained 1.15x faster in bf16 (fresh processes in pairs; README "Throughput",
  reports/bench/). fp32 attention is also the more precise; it saves its inputs and output for the backward in fp32
  (4 bytes, not 2, per element of q, k, v and out).
- With dropout (BERT's attention_probs_dropout_prob, GPT-2's attn_pdrop: MiniLM's 0.1 in training), torch's SDPA
  takes its math path and drops with `bernoulli_`, a serial loop on non-Intel CPUs (harness/dropout.py). Here the
  attention is written out (scores, the mask, an fp32 softmax, dropout, the product with the values) in the
  compute dtype, with harness.dropout's masks: MiniLM LoRA 1.07x in bf16, 1.03x in fp32. Same distribution, other
  random samples (as train.fast_dropout's).
Off the CPU, and for what this does not cover (softcap, a position bias, attention sinks, dropout with queries
shorter than keys), it is transformers' sdpa itself.
"""

from __future__ import annotations

import torch
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

from harness.dropout import keep_bits

NAME = "sdpa_cpu"
_HOST = ("cpu", "meta")


def sdpa_cpu(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    """transformers' attention-function signature: query [batch, heads, q, dim], key and value [batch, kv_heads,
    k, dim]; returns the output as [batch, q, heads, dim] and no attention weights."""
    if (query.device.type not in _HOST or any(kwargs.get(k) is not None for k in ("softcap", "position_bias", "s_aux"))
            or (dropout > 0 and query.shape[2] != key.shape[2])):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    if dropout > 0:
        return _explicit(module, query, key, value, attention_mask, dropout, scaling, is_causal), None
    dtype = query.dtype
    if dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, is_causal=is_causal,
                                      **kwargs)
    mask = attention_mask.float() if attention_mask is not None and attention_mask.is_floating_point() else attention_mask
    with torch.autocast("cpu", enabled=False):
        out, _ = sdpa_attention_forward(module, query.float(), key.float(), value.float(), mask, scaling=scaling,
                                        is_causal=is_causal, **kwargs)
    return out.to(dtype), None


def _explicit(module, query, key, value, mask, p: float, scaling, is_causal) -> torch.Tensor:
    """softmax(q k^T * scale + mask) with dropout p (harness.dropout's masks), times v, as [batch, q, heads, dim]."""
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    scores = torch.matmul(query, key.transpose(2, 3))
    scores = scores * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    q_len, k_len = query.shape[2], key.shape[2]
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if mask is None and causal and q_len > 1:  # what sdpa's is_causal does (no mask given: no padding)
        mask = torch.ones(q_len, k_len, dtype=torch.bool, device=query.device).tril()
    if mask is not None:
        # the dtype's lowest value, not -inf: a row with every key masked gets uniform weights, not NaN
        scores = (scores.masked_fill(~mask, torch.finfo(scores.dtype).min) if mask.dtype == torch.bool
                  else scores + mask.to(scores.dtype))
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    keep = keep_bits(probs.shape, p, device=probs.device)
    probs = torch.where(keep, probs, 0).mul_(1.0 / (1.0 - p))
    return torch.matmul(probs, value).transpose(1, 2).contiguous()


def implementation(attn: str | None, device: str = "cpu") -> str | None:
    """The attn_implementation transformers is given for a config's `attn`: sdpa_cpu registered first (on a device
    other than the CPU, where it is transformers' sdpa, the planner traces "sdpa"); anything else as it is."""
    if attn != NAME:
        return attn
    return register() if device == "cpu" else "sdpa"


def register() -> str:
    """Make `sdpa_cpu` a valid attn_implementation for transformers (idempotent). Returns its name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, sdpa_cpu)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    return NAME
