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

RECORD_NAME = "record.json"
SCHEMA_VERSION = 1
# Keys of the resolved config that do not change what a run computes (left out of the hash).
HASH_EXCLUDE = ("paths", "tags", "report", "search")


def config_hash(resolved_cfg: dict) -> str:
    core = {k: v for k, v in resolved_cfg.items() if k not in HASH_EXCLUDE}
    if isinstance(core.get("model"), dict) and "shape" in core["model"]:  # planner metadata, not what runs
        core["model"] = {k: v for k, v in core["model"].items() if k != "shape"}
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
        "memory_mb": mem_total,
        "gpu": gpu,
        "device": "cuda" if gpu else "cpu",
    }


def write_json_atomic(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON so that a reader sees either the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False, default=str, allow_nan=True)
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
