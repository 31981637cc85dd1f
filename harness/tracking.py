"""Experiment trackers (train.report_to): TensorBoard, MLflow, Weights & Biases.

The Trainer's own integrations log the training curve (loss, learning rate, evaluations); `Tracking` opens the
tracker's run before the Trainer exists, so that the Trainer writes into it, and closes it after the run with the
record's summary (final and best metrics, trainable parameters, peak memory, throughput, status). Where each one
writes, unless the environment already says (TENSORBOARD_LOGGING_DIR, MLFLOW_TRACKING_URI, WANDB_DIR):
- tensorboard: <run dir>/tensorboard (event files; `tensorboard --logdir outputs/`)
- mlflow: a SQLite store <run dir>/mlflow.db, experiment = experiment_name, run name = the run id (MLflow 3 keeps
  its plain-file store in maintenance mode and refuses it by default); set MLFLOW_TRACKING_URI to share a server
- wandb: project = experiment_name, run name = the run id, files under <run dir>/wandb (WANDB_MODE=offline works
  without a network)
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from harness.config import Config

log = logging.getLogger("harness.tracking")

# train.report_to value -> (the package it needs, the Trainer's report_to name)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def names(cfg: Config) -> list[str]:
    return [str(x) for x in cfg.train.report_to]


def check(cfg: Config) -> None:
    """Fail before any model loads when a requested tracker's package is not installed."""
    from harness.config import ConfigError

    for n in names(cfg):
        pkg = TRACKERS[n][0]
        if importlib.util.find_spec(pkg) is None:
            hint = "pip install -e '.[tracking]'" if n != "wandb" else "pip install wandb"
            raise ConfigError(f"train.report_to={n}: the {pkg!r} package is not installed ({hint})")


def summary(rec: dict) -> dict[str, float]:
    """The record's numbers a tracker keeps: final/<split>/<metric>, best/<split>/<metric>, cost figures."""
    out: dict[str, float] = {}
    m = rec.get("metrics") or {}
    for kind in ("final", "best"):
        for split, vals in (m.get(kind) or {}).items():
            for k, v in (vals or {}).items():
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    out[f"{kind}/{split}/{k}"] = float(v)
    extra = {
        "params/trainable": (rec.get("params") or {}).get("trainable"),
        "params/trainable_pct": (rec.get("params") or {}).get("trainable_pct"),
        "memory/peak_mb": (rec.get("memory") or {}).get("peak_mb"),
        "throughput/tokens_per_s": (rec.get("throughput") or {}).get("tokens_per_s"),
        "time/total_s": (rec.get("times") or {}).get("total_s"),
        "steps": rec.get("steps"),
    }
    out.update({k: float(v) for k, v in extra.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


class Tracking:
    """Open the requested trackers' runs (before the Trainer), close them with the record's summary (after)."""

    def __init__(self, cfg: Config, run_dir: Path, run_name: str):
        self.trackers, self.run_dir, self.run_name = names(cfg), Path(run_dir), run_name
        self.experiment = str(cfg.experiment_name)
        self.where: dict[str, str] = {}
        self._mlflow = self._wandb = None
        self._unset: list[str] = []  # environment variables this run set

    def start(self, resolved_cfg: dict) -> dict:
        """Set up every tracker; returns what the record keeps (tracker -> where it writes)."""
        if "tensorboard" in self.trackers:
            d = os.environ.get("TENSORBOARD_LOGGING_DIR")
            if d is None:  # the Trainer's TensorBoardCallback reads it; unset again at the end (a search runs on)
                d = os.environ["TENSORBOARD_LOGGING_DIR"] = str(self.run_dir / "tensorboard")
                self._unset.append("TENSORBOARD_LOGGING_DIR")
            self.where["tensorboard"] = d
        if "mlflow" in self.trackers:
            import mlflow

            uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(self.run_dir / 'mlflow.db').resolve()}"
            mlflow.set_tracking_uri(uri)
            mlflow.set_experiment(self.experiment)
            run = mlflow.start_run(run_name=self.run_name)  # the Trainer's MLflowCallback logs into the active run
            self._mlflow = mlflow
            self.where["mlflow"] = f"{uri} (run {run.info.run_id})"
        if "wandb" in self.trackers:
            import wandb

            if "WANDB_DIR" not in os.environ:
                os.environ["WANDB_DIR"] = str(self.run_dir)
                self._unset.append("WANDB_DIR")
            run = wandb.init(project=self.experiment, name=self.run_name, config=resolved_cfg,
                             dir=os.environ["WANDB_DIR"], reinit=True)
            self._wandb = wandb
            self.where["wandb"] = f"{os.environ['WANDB_DIR']} (run {run.id})"
        return dict(self.where)

    def report_to(self) -> list[str]:
        return [TRACKERS[n][1] for n in self.trackers]

    def finish(self, rec: dict) -> None:
        """Write the record's summary into each tracker's run and close it (status failed unless the run is ok)."""
        nums = summary(rec)
        ok = rec.get("status") == "ok"
        for name, fn in (("tensorboard", self._finish_tensorboard), ("mlflow", self._finish_mlflow),
                         ("wandb", self._finish_wandb)):
            if name in self.trackers:
                try:
                    fn(rec, nums, ok)
                except Exception as e:  # a tracker never costs the run its record
                    log.warning("%s: the run's summary was not written: %s", name, e)
        for k in self._unset:
            os.environ.pop(k, None)

    def _finish_tensorboard(self, rec: dict, nums: dict, ok: bool) -> None:
        import json

        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(log_dir=self.where["tensorboard"])
        step = int(rec.get("steps") or 0)
        for k, v in nums.items():
            w.add_scalar(f"summary/{k}", v, global_step=step)
        w.add_text("summary/status", str(rec.get("status")), global_step=step)
        w.add_text("summary/config", "```\n" + json.dumps(rec.get("config"), indent=1, default=str) + "\n```",
                   global_step=step)
        w.close()

    def _finish_mlflow(self, rec: dict, nums: dict, ok: bool) -> None:
        mlflow = self._mlflow
        if mlflow.active_run() is None:  # the Trainer's callback ended it (it should not: we started it)
            return
        mlflow.log_metrics({k.replace("/", "."): v for k, v in nums.items()}, step=int(rec.get("steps") or 0))
        mlflow.set_tags({"harness.status": str(rec.get("status")), "harness.config_hash": str(rec.get("config_hash"))})
        mlflow.end_run(status="FINISHED" if ok else "FAILED")

    def _finish_wandb(self, rec: dict, nums: dict, ok: bool) -> None:
        wandb = self._wandb
        if wandb.run is None:
            return
        wandb.run.summary.update({**nums, "status": rec.get("status"), "config_hash": rec.get("config_hash")})
        wandb.finish(exit_code=0 if ok else 1)
