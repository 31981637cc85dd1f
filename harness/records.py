"""The result record: one self-describing JSON per run, written atomically (temp file + rename)."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from harness.record import SCHEMA_VERSION  # noqa: F401  (re-exported: the record's shape is harness/record.py)

RECORD_NAME = "record.json"
# beside a run's saved adapter: its weights before the first step (harness.analyze measures how far A moved)
ADAPTER_INIT_NAME = "adapter_init.safetensors"
# Keys of the resolved config that do not change what a run computes (left out of the hash).
HASH_EXCLUDE = ("paths", "tags", "report", "search", "plan")
# ... and keys inside groups: display titles; planner metadata; the checkpoint format allowed (same weights either way); stopping
# on a non-finite loss (a run that never meets one computes the same, and one that did is not `ok`, so reruns);
# how memory is metered (the probe restores the RNG and drops its gradients: training is the same); computing a causal
# LM's logits only where the loss reads them (the same loss up to float rounding: tests/test_train.py)
HASH_EXCLUDE_KEYS = {"model": ("shape", "use_safetensors"), "method": ("title",), "task": ("title",),
                     "train": ("stop_on_nonfinite_loss", "memory_probe", "report_to", "save_every",
                               "save_every_min", "scored_logits_only")}
# schema keys added after records existed, left out of the hash while at the value that computes what runs made
# before them computed (their default, except train.fast_dropout, on by default: false is torch's dropout, as before),
# so such a run's hash, resume and grouping with older seeds stay the same
HASH_OMIT_DEFAULTS = {"method": {"bias_only": False}, "train": {"lr_bitfit": None, "fast_dropout": False},
                      "model": {"kind": None, "targets": {}, "attn_implementation": None},
                      "lora": {"use_rslora": False, "use_dora": False, "init": "default"}}


def unused_lrs(method: dict) -> set[str]:
    """The method-specific learning rates a method does not train with (config.lr_key): a recipe that sets one for
    another method (the MRPC recipe's lr_bitfit) changes nothing a LoRA run computes."""
    from harness.config import lr_key

    return {"lr_full", "lr_bitfit", "lr_head"} - {lr_key(method)}


def hashed_config(resolved_cfg: dict) -> dict:
    """The part of a resolved config that decides what a run computes (what the config hash covers)."""
    core = {k: v for k, v in resolved_cfg.items() if k not in HASH_EXCLUDE}
    for group, keys in HASH_EXCLUDE_KEYS.items():
        if isinstance(core.get(group), dict):
            core[group] = {k: v for k, v in core[group].items() if k not in keys}
    for group, defaults in HASH_OMIT_DEFAULTS.items():
        if isinstance(core.get(group), dict):
            core[group] = {k: v for k, v in core[group].items() if k not in defaults or v != defaults[k]}
    if isinstance(core.get("train"), dict) and isinstance(core.get("method"), dict):
        unused = unused_lrs(core["method"])
        core["train"] = {k: v for k, v in core["train"].items() if k not in unused}
    return core


# changes whenever the rules above change: the results store then re-derives every record's hash (store.Store)
HASH_VERSION = hashlib.sha256(json.dumps(
    [HASH_EXCLUDE, {k: list(v) for k, v in HASH_EXCLUDE_KEYS.items()}, HASH_OMIT_DEFAULTS, "unused_lrs:1"],
    sort_keys=True).encode()).hexdigest()[:12]


def checkpoint_dir(output_root: str | os.PathLike, experiment: str, chash: str) -> Path:
    """Where a configuration's mid-run checkpoints live: found again by any rerun of the same config."""
    return Path(output_root) / "checkpoints" / experiment / chash


def identity(rec: dict) -> str:
    """What a record computed: the hash of its config under the rules as they are now. A record written before a
    key joined the exclusions carries another stored config_hash for the same computation; the results store and
    the reports key records by this."""
    cfg = rec.get("config")
    return config_hash(cfg) if isinstance(cfg, dict) else str(rec.get("config_hash", rec.get("_path", "?")))


def config_hash(resolved_cfg: dict) -> str:
    core = hashed_config(resolved_cfg)
    blob = json.dumps(core, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets", "hydra-core", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def git_commit() -> dict:
    root = Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True, timeout=5).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha or None, "dirty": dirty if sha else None}


def host() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    if torch.cuda.is_available():
        gpu = {"name": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
               "memory_mb": torch.cuda.get_device_properties(0).total_memory / 2**20}
    mem_total = None
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_total = int(line.split()[1]) / 1024
    except OSError:
        pass
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # the kernels torch runs (AVX2 / AVX512): ATEN_CPU_CAPABILITY and ONEDNN_MAX_CPU_ISA can hold it below the CPU's
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "isa_limits": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA") if k in os.environ},
        # how idle OpenMP threads wait (harness.profile.OMP_ENV): it decides the speed when the cores are shared
        "openmp_wait": {k: os.environ.get(k) for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")},
        "memory_mb": mem_total,
        "gpu": gpu,
        "device": "cuda" if gpu else "cpu",
    }


class OutputError(RuntimeError):
    """The output directory cannot be written (missing permission, not a directory, disk full)."""


def check_writable(directory: str | os.PathLike) -> Path:
    """Create `directory` and write (then remove) a probe file in it, so that a run fails before any work when
    its record could not be written. Raises OutputError naming the directory and the reason."""
    d = Path(directory)
    try:
        d.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write results to {str(d)!r}: {e.strerror or e}") from e
    return d


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON so that a reader sees either the old file or the complete new one, never a part."""
    return write_bytes_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str,
                                               allow_nan=True).encode())


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write a file so that a reader sees either the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def read_record(path: str | os.PathLike) -> dict:
    with open(path) as f:
        return json.load(f)
