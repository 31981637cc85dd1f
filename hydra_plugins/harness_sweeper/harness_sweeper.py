"""Hydra sweeper `hydra/sweeper=harness_basic`: Hydra's basic grid sweeper plus the grid's baselines as runs.

An experiment lists them beside its grid:

    hydra:
      sweeper:
        params: {method: lora,qlora_nf4_dq, lora.r: 2,8, ...}
        baselines: [majority, zero_shot, head_only]

and every (model, task, recipe, seed, ...) the grid fine-tunes also gets one run of each baseline method, recorded
like any run (so the grid's report shows each fine-tuned row beside its best baseline, measured at the same seed on
the same data) and resumed by config hash like any run. They are launched after the grid's jobs: short jobs last
fill the cores the last long ones leave idle (the default grid, two runs at a time, lost a minute to one job running
alone when they went first). A baseline job is the grid job with its `method=` replaced and its `lora.*` and
`method.*` settings dropped (a baseline trains no adapter and has its own method settings: jobs that differ only
there are one baseline run). A baseline the task does not allow (zero-shot of a cross-encoder's fresh head, a
head-only probe of a causal LM: harness.config) is left out, and the log says why. It works with every launcher (the
local fresh-process one, SLURM), since the jobs are added before any launcher sees them.
"""

import logging
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from omegaconf import open_dict, read_write

log = logging.getLogger("harness.sweeper")


@dataclass
class HarnessSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.harness_sweeper.harness_sweeper.HarnessSweeper"
    # baseline methods (conf/method/ with a `baseline:` key) run for every configuration the grid fine-tunes
    baselines: List[str] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="harness_basic", node=HarnessSweeperConf,
                             provider="lora-harness")


def _key(override: str) -> str:
    """The config key an override sets: `lora.r` for `lora.r=8`, `++lora.r=8` or `~lora.r`."""
    return override.split("=", 1)[0].lstrip("+~")


def baseline_jobs(jobs: Sequence[Sequence[str]], baselines: Sequence[str]) -> List[List[str]]:
    """One job per baseline method for every distinct grid job that fine-tunes, in order of first appearance:
    the job with `method=<baseline>` in place of its method and without its `lora.*` and `method.*` overrides (the
    fine-tuning method's own settings: a swept compute dtype or quantization is one baseline run). Jobs that are
    themselves one of these baselines are left as they are (the grid already runs them)."""
    def method_of(job):
        return next((o.split("=", 1)[1] for o in job if _key(o) == "method"), None)

    out, seen = [], {tuple(job) for job in jobs if method_of(job) in baselines}
    for job in jobs:
        method = method_of(job)
        if method in baselines:
            continue
        for b in baselines:
            new = [o for o in job if not _key(o).startswith(("lora.", "method."))]
            if method is None:
                new.insert(0, f"method={b}")
            else:
                new = [f"method={b}" if _key(o) == "method" else o for o in new]
            if tuple(new) not in seen:
                seen.add(tuple(new))
                out.append(new)
    return out


class HarnessSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[dict] = None,
                 baselines: Sequence[str] = ()) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.baselines = [str(b) for b in baselines]

    def _allowed(self, job: List[str]) -> Optional[str]:
        """None if the job's config is valid, else why not (harness.config.validate's message)."""
        from harness.config import ConfigError, validate

        cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(job))  # a fresh copy
        with read_write(cfg), open_dict(cfg):
            del cfg["hydra"]
        try:
            validate(cfg)
        except ConfigError as e:
            return str(e)
        return None

    def split_arguments(self, overrides: List[Any], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        """The grid's batches, with the baseline jobs last (they are short: they fill the tail)."""
        batches = BasicSweeper.split_arguments(overrides, max_batch_size)
        if not self.baselines:
            return batches
        from harness.config import Baseline

        unknown = sorted(set(self.baselines) - {b.value for b in Baseline if b.value != "none"})
        if unknown:
            raise ValueError(f"hydra.sweeper.baselines: {unknown} are not baseline methods; valid: "
                             f"{sorted(b.value for b in Baseline if b.value != 'none')}")
        jobs = [job for batch in batches for job in batch]
        extra = []
        for job in baseline_jobs(jobs, self.baselines):
            why = self._allowed(job)
            if why is None:
                extra.append(job)
            else:
                log.info("baseline left out (%s): %s", " ".join(job), why.split(";")[0])
        log.info("%d baseline jobs (%s) after the grid's %d", len(extra), ", ".join(self.baselines), len(jobs))
        every = jobs + extra
        size = max_batch_size or len(every) or 1
        return [every[i:i + size] for i in range(0, len(every), size)]
