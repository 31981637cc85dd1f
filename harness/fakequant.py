"""Fake (simulated) 4-bit quantization in torch: each weight of the base's linear layers is replaced by its
blockwise-quantized value (quantize, then dequantize, stored back in the weight's own dtype), so a data type
bitsandbytes does not implement can be measured: QLoRA Table 2's Int4 and Float4 (E3M0) rows.

Every type is absmax-blockwise as bitsandbytes' 4-bit types are: the weight is flattened row-major into blocks of
64, each block is divided by its absolute maximum, every value is rounded to the nearest of the type's 16 codes,
and multiplied back. The codes (normalized to [-1, 1]):

- `nf4`: NormalFloat4 (QLoRA section 3): bitsandbytes' 16 values (tests check them against bitsandbytes).
- `fp4`: Float4 E2M1 as bitsandbytes defines it: +-{0, 1/192, 1/6, 1/4, 1/3, 1/2, 2/3, 1} (tests check them).
- `fp4_e3m0`: Float4 with 3 exponent bits and no mantissa: +-2^-k for k = 0..6, and 0.
- `int4`: symmetric absmax Int4: k/7 for k = -7..7.

`fake_nf4` / `fake_fp4` reproduce bitsandbytes' own NF4 / FP4 round trip (a test checks it), so the fake rows sit
beside measured ones. Double quantization of the block constants is not simulated: the constants stay exact, so a
fake type is compared with bitsandbytes' type without DQ. Only the numbers are simulated: the weights still take
their full fp32 bytes, so memory is not measured for these types.
"""

from __future__ import annotations

import torch
from torch import nn

BLOCKSIZE = 64

_NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
        -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
        0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
_FP4_E2M1 = [0.0, 1 / 192, 1 / 6, 0.25, 1 / 3, 0.5, 2 / 3, 1.0]
_FP4_E3M0 = [0.0] + [2.0 ** -k for k in range(7)]


def _signed(mags: list[float]) -> list[float]:
    return sorted(set(mags) | {-m for m in mags})


CODES: dict[str, list[float]] = {
    "nf4": _NF4,
    "fp4": _signed(_FP4_E2M1),
    "fp4_e3m0": _signed(_FP4_E3M0),
    "int4": [k / 7 for k in range(-7, 8)],
}
LABELS = {"nf4": "NFloat4", "fp4": "Float4 (E2M1)", "fp4_e3m0": "Float4 (E3M0)", "int4": "Int4 (absmax)"}


class FakeQuantError(ValueError):
    pass


def codes(kind: str) -> torch.Tensor:
    if kind not in CODES:
        raise FakeQuantError(f"fake quantization type {kind!r} is not valid; valid: {sorted(CODES)}")
    return torch.tensor(CODES[kind], dtype=torch.float32)


def quantize_dequantize(w: torch.Tensor, kind: str, blocksize: int = BLOCKSIZE) -> torch.Tensor:
    """w rounded to the type's codes blockwise (absmax per block of `blocksize` consecutive elements, row-major, as
    bitsandbytes blocks a weight), returned in w's dtype and shape."""
    cb = codes(kind)
    flat = w.detach().reshape(-1).float()
    n = flat.numel()
    pad = (-n) % blocksize
    x = torch.cat([flat, flat.new_zeros(pad)]).view(-1, blocksize)
    absmax = x.abs().amax(dim=1, keepdim=True)
    scale = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    normed = (x / scale).clamp(-1, 1)
    # the nearest code: the midpoints between neighbouring codes are the decision thresholds
    mids = (cb[1:] + cb[:-1]) / 2
    idx = torch.bucketize(normed, mids)
    out = (cb[idx] * scale).reshape(-1)[:n]
    return out.view_as(w).to(w.dtype)


def apply(model: nn.Module, kind: str, skip: tuple[str, ...], blocksize: int = BLOCKSIZE) -> dict:
    """Replace every nn.Linear weight not under a `skip` name by its fake-quantized value, in place. Returns what
    was done: the type, the layers, and each layer's relative reconstruction error ||W - Q(W)||_F / ||W||_F."""
    codes(kind)
    layers = []
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, nn.Linear) or any(s in name.split(".") or name.endswith(s) for s in skip):
                continue
            w = m.weight
            q = quantize_dequantize(w, kind, blocksize)
            norm = float(w.float().norm())
            err = float((w.float() - q.float()).norm()) / norm if norm > 0 else 0.0
            w.copy_(q)
            layers.append({"name": name, "numel": int(w.numel()), "rel_error": err})
    if not layers:
        raise FakeQuantError(f"fake quantization {kind!r}: the model has no linear layer to quantize")
    errs = [x["rel_error"] for x in layers]
    total = sum(x["numel"] for x in layers)
    # the error over all quantized weights at once: sqrt(sum of squared errors / sum of squared weights) is not
    # recoverable from the per-layer ratios alone, so the summary gives the per-layer mean, median and max
    return {
        "type": kind, "label": LABELS[kind], "blocksize": blocksize, "layers": len(layers), "numel": total,
        "rel_error_mean": sum(errs) / len(errs), "rel_error_median": sorted(errs)[len(errs) // 2],
        "rel_error_max": max(errs),
        "bits_per_param_simulated": 4 + 32 / blocksize,  # 4-bit codes and one fp32 absmax per block, if stored
        "per_layer": layers,
    }

