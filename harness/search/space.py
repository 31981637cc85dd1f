"""The search space and its config: parameters, overrides, validation, samplers and pruners (pure; no storage)."""

from __future__ import annotations

import logging
import re
from dataclasses import fields, is_dataclass
from typing import TYPE_CHECKING, Any

from harness.config import ConfigError, compose

if TYPE_CHECKING:
    from harness.config import Config

log = logging.getLogger("harness.search")

DEFAULT_SEARCH = "mrpc_minilm"
STUDY_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
# objectives read from the record rather than the task's metrics: name -> (path in the record, direction hint)
COSTS = {
    "peak_memory_mb": ("memory", "peak_mb"),
    "trainable_params": ("params", "trainable"),
    "train_s": ("times", "train_s"),
    "tokens_per_s": ("throughput", "tokens_per_s"),
}
SAMPLERS = ("tpe", "random")
PRUNERS = ("median", "hyperband", "none")
FINISHED = ("COMPLETE", "PRUNED")


# ============================================================================================ config
def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(*groups: list[str]) -> list[str]:
    """Later groups win for the same key (base < command line < trial parameters); order otherwise kept."""
    out: dict[str, str] = {}
    for group in groups:
        for o in group:
            if "=" not in o:
                raise ConfigError(f"override {o!r} is not of the form key=value")
            out.pop(_key(o), None)
            out[_key(o)] = o
    return list(out.values())


def param_key(name: str, p) -> str:
    """The run config value a search parameter sets."""
    return p.key or name


def rank_param(spec) -> str | None:
    """The name of the parameter that sets lora.r (multiple_of_r multiplies by it)."""
    return next((n for n, p in spec.params.items() if param_key(n, p) == "lora.r"), None)


def param_overrides(spec, params: dict[str, Any]) -> dict[str, Any]:
    """A trial's Optuna parameters -> {run config key: value} (alpha given as a multiple of r becomes alpha)."""
    out = {}
    r_name = rank_param(spec)
    for name, p in spec.params.items():
        value = params[_optuna_name(name, p)]
        if _ptype(p) == "multiple_of_r":
            if r_name is None:
                raise ConfigError(f"search.params.{name}: multiple_of_r needs a parameter with key lora.r")
            value = float(value) * float(params[r_name])
        out[param_key(name, p)] = value
    return out


def _ptype(p) -> str:
    return str(p.type)


def _optuna_name(name: str, p) -> str:
    return f"{name}/r" if _ptype(p) == "multiple_of_r" else name


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def _override(name: str, value: Any) -> str:
    return f"{name}={value!r}" if isinstance(value, float) else f"{name}={value}"


def has_key(cfg: Config, dotted: str) -> bool:
    """Whether `dotted` (lora.r, train.lr, ...) names a value of the typed run config."""
    node = cfg
    for part in dotted.split("."):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
        elif is_dataclass(node) and part in {f.name for f in fields(node)}:
            node = getattr(node, part)
        else:
            return False
    return True


def validate_search(spec, cfg: Config, base: list[str] = (), user_overrides: list[str] = ()) -> None:
    """Check a search space before any model loads; raise ConfigError naming the bad value and the valid ones.
    `cfg` is the run config composed from `base` (the overrides every trial starts from)."""
    from hydra.errors import ConfigCompositionException

    from harness.config import kind_of, validate

    if not STUDY_RE.match(str(spec.study)):
        raise ConfigError(f"search.study={spec.study!r} is not valid: use letters, digits, '_', '.', '-' "
                          "(it names a folder under the output root)")
    if spec.n_trials < 1:
        raise ConfigError(f"search.n_trials={spec.n_trials} is out of range: it must be >= 1")
    if not spec.params:
        raise ConfigError("search.params is empty: name at least one run config value to search (e.g. lora.r)")
    if spec.heartbeat_s < 1:
        raise ConfigError(f"search.heartbeat_s={spec.heartbeat_s} is out of range: it must be >= 1")
    keys = [param_key(n, p) for n, p in spec.params.items()]
    if len(set(keys)) != len(keys):
        raise ConfigError(f"search.params: two parameters set the same run config value ({keys})")
    for name, p in spec.params.items():
        where = f"search.params.{name}"
        key = param_key(name, p)
        if not has_key(cfg, key):
            raise ConfigError(f"{where}: key {key!r} is not a value of the run config (e.g. lora.r, lora.alpha, "
                              "train.lr, lora.targets, lora.dropout)")
        if key in {_key(o) for o in user_overrides}:
            raise ConfigError(f"{where} searches {key}, so it cannot also be set on the command line; drop one")
        kind = _ptype(p)
        if kind in ("categorical", "multiple_of_r"):
            if not p.choices:
                raise ConfigError(f"{where}: type {kind} needs a non-empty `choices` list")
            if p.low is not None or p.high is not None:
                raise ConfigError(f"{where}: type {kind} takes `choices`, not low/high")
            if len(set(map(str, p.choices))) != len(p.choices):
                raise ConfigError(f"{where}: choices {list(p.choices)} repeat a value")
            if kind == "multiple_of_r":
                if key != "lora.alpha":
                    raise ConfigError(f"{where}: multiple_of_r is for lora.alpha only (key: lora.alpha)")
                if rank_param(spec) is None:
                    raise ConfigError(f"{where}: multiple_of_r needs a parameter with key lora.r in search.params")
                if any(not isinstance(c, (int, float)) or c <= 0 for c in p.choices):
                    raise ConfigError(f"{where}: multiple_of_r choices must be positive numbers, got {list(p.choices)}")
        else:
            if p.choices:
                raise ConfigError(f"{where}: type {kind} takes low/high, not `choices` (use type: categorical)")
            if p.low is None or p.high is None:
                raise ConfigError(f"{where}: type {kind} needs both low and high")
            if not p.low < p.high:
                raise ConfigError(f"{where}: low={p.low} high={p.high} is an empty range (low must be < high)")
            if p.log and p.low <= 0:
                raise ConfigError(f"{where}: log: true needs low > 0, got low={p.low}")
            if p.step is not None and (p.step <= 0 or p.log):
                raise ConfigError(f"{where}: step={p.step} must be > 0 and cannot be combined with log: true")
            if kind == "int" and (p.low != int(p.low) or p.high != int(p.high)):
                raise ConfigError(f"{where}: type int needs integer low/high, got {p.low}, {p.high}")
    task_metrics = list(cfg.task.metrics)
    splits = run_eval_splits(cfg.task)
    objectives = [("search.objective", spec.objective)]
    if spec.second_objective is not None:
        objectives.append(("search.second_objective", spec.second_objective))
    for where, o in objectives:
        if o.metric not in task_metrics + ["loss"] + list(COSTS):
            raise ConfigError(f"{where}.metric={o.metric!r} is not valid for task {cfg.task.name!r} "
                              f"({kind_of(cfg.task)}); valid: {task_metrics + ['loss'] + sorted(COSTS)}")
        if o.split is not None and o.split not in splits:
            raise ConfigError(f"{where}.split={o.split!r} is not an eval split of task {cfg.task.name!r}; "
                              f"valid: {splits}")
    if spec.objective.metric in COSTS:
        raise ConfigError(f"search.objective.metric={spec.objective.metric!r} is a cost; put a task metric "
                          f"({task_metrics}) first and the cost in search.second_objective")
    if spec.sampler.name not in SAMPLERS:
        raise ConfigError(f"search.sampler.name={spec.sampler.name!r} is not valid; valid: {list(SAMPLERS)}")
    if spec.pruner.name not in PRUNERS:
        raise ConfigError(f"search.pruner.name={spec.pruner.name!r} is not valid; valid: {list(PRUNERS)}")
    if spec.pruner.name != "none" and int(cfg.train.eval_every) <= 0:
        raise ConfigError(f"search.pruner.name={spec.pruner.name!r} needs evaluations during training to prune on: "
                          "set train.eval_every > 0 (in search.base), or search.pruner.name=none")
    for i, fixed in enumerate(spec.enqueue):
        to_optuna_params(spec, dict(fixed), where=f"search.enqueue[{i}]")
    # every value the space can take must make a valid run config (checked with the run's own validation)
    for name, p in spec.params.items():
        kind = _ptype(p)
        if kind == "multiple_of_r":
            continue
        values = list(p.choices) if kind == "categorical" else [p.low, p.high]
        for v in values:
            v = int(v) if kind == "int" else v
            try:
                c = compose(merge_overrides(list(base), [_override(param_key(name, p), v)]))
                validate(c)
            except ConfigError as e:
                raise ConfigError(f"search.params.{name}: the value {v!r} makes an invalid run: {e}") from None
            except ConfigCompositionException as e:  # a value the schema refuses (an enum's unknown option)
                why = str(e.__cause__ or e).splitlines()[0]
                raise ConfigError(f"search.params.{name}: the value {v!r} makes an invalid run: {why}") from None


def to_optuna_params(spec, fixed: dict[str, Any], where: str = "fixed parameters") -> dict[str, Any]:
    """Fixed values by parameter name (as a user writes them, alpha as alpha) -> the study's parameters."""
    unknown = sorted(set(fixed) - set(spec.params))
    if unknown:
        raise ConfigError(f"{where}: {unknown} are not searched parameters; searched: {sorted(spec.params)}")
    out = {}
    r_name = rank_param(spec)
    for name, v in fixed.items():
        p = spec.params[name]
        kind = _ptype(p)
        if kind == "multiple_of_r":
            if r_name not in fixed:
                raise ConfigError(f"{where}: {name} (alpha) needs {r_name} (r) beside it")
            v = float(v) / float(fixed[r_name])
        if kind in ("categorical", "multiple_of_r"):
            match = [c for c in p.choices if c == v or str(c) == str(v)]
            if not match:
                raise ConfigError(f"{where}: {name}={fixed[name]!r} is outside the space; choices: "
                                  f"{list(p.choices) if kind == 'categorical' else [c * fixed[r_name] for c in p.choices]}")
            v = match[0]
        elif not p.low <= float(v) <= p.high:
            raise ConfigError(f"{where}: {name}={v!r} is outside the space [{p.low}, {p.high}]")
        out[_optuna_name(name, p)] = v
    return out


def suggest(trial, spec) -> dict[str, Any]:
    """Ask the trial for every parameter of the space; returns run config values."""
    raw = {}
    for name, p in spec.params.items():
        kind, oname = _ptype(p), _optuna_name(name, p)
        if kind in ("categorical", "multiple_of_r"):
            raw[oname] = trial.suggest_categorical(oname, list(p.choices))
        elif kind == "int":
            raw[oname] = trial.suggest_int(oname, int(p.low), int(p.high), step=int(p.step or 1), log=bool(p.log))
        else:
            raw[oname] = trial.suggest_float(oname, float(p.low), float(p.high), step=p.step, log=bool(p.log))
    return param_overrides(spec, raw)


def directions(spec) -> list[str]:
    objs = [spec.objective] + ([spec.second_objective] if spec.second_objective is not None else [])
    return [str(o.direction) for o in objs]







def _sampler(spec, trial_number: int = 0):
    """Seeded with search.sampler.seed + the number of the trial it is about to draw (run_worker makes one per ask):
    one seed gives the same trials on a fresh study, while a resumed study, or a second worker, draws new ones. A
    sampler seeded once per process replayed its first draws on every resume: the mrpc_minilm study's trials 4 and
    5 repeated trials 1 and 2's parameters."""
    import optuna

    s = spec.sampler
    seed = None if s.seed is None else int(s.seed) + trial_number
    if s.name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=s.n_startup_trials,
                                      multivariate=True, constant_liar=True)


def _pruner(spec):
    import optuna

    p = spec.pruner
    if p.name == "none" or spec.second_objective is not None:  # Optuna cannot prune multi-objective trials
        return optuna.pruners.NopPruner()
    if p.name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)


def describe_sampler(spec) -> str:
    s = spec.sampler
    if s.name == "random":
        return f"random (seed {s.seed} + trial number)"
    return f"TPE (seed {s.seed} + trial number, {s.n_startup_trials} random startup trials, multivariate, constant liar)"


def describe_pruner(spec) -> str:
    p = spec.pruner
    if spec.second_objective is not None:
        return "none (Optuna cannot prune multi-objective trials)"
    if p.name == "median":
        return (f"median (a trial below the median of earlier trials at the same step stops; the first "
                f"{p.n_startup_trials} trials are never pruned" +
                (f", nor any trial before step {p.n_warmup_steps})" if p.n_warmup_steps else ")"))
    if p.name == "hyperband":
        return f"Hyperband (min resource {p.min_resource} steps, reduction factor {p.reduction_factor})"
    return "none"


def space_description(spec) -> dict:
    """What must not change when a study is resumed: the space and the objectives (stored with the study)."""
    from harness.config import plain

    return {
        "params": plain(spec.params),
        "directions": directions(spec),
        "objectives": [plain(spec.objective)] + ([plain(spec.second_objective)] if spec.second_objective else []),
    }


def run_eval_splits(task) -> list[str]:
    """The splits a run evaluates on: the carved one alone when choosing a recipe (task.tune), else the task's."""
    from harness.tasks.data import CARVED

    return [CARVED] if task.tune else list(task.eval_splits)

