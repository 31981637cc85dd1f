"""What the config groups hold, read from conf/ itself: the one place a method, task or model is declared.

A method variant or a task is one YAML file in its group folder; everything that lists them (the planner's methods,
the reports' row titles, the tests' parameter lists) reads them from here instead of keeping its own copy.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import yaml

CONF = Path(__file__).resolve().parents[1] / "conf"


def options(group: str) -> list[str]:
    """The names a config group accepts (conf/<group>/*.yaml), sorted."""
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@lru_cache(maxsize=None)
def entries(group: str) -> dict[str, dict]:
    """{name: the YAML's keys} of a config group (the group files are plain mappings of their schema's fields)."""
    return {name: yaml.safe_load((CONF / group / f"{name}.yaml").read_text(encoding="utf-8")) or {}
            for name in options(group)}


def titles(group: str) -> dict[str, str]:
    """{name: its display title (the YAML's `title`, else the name)} for reports and plots."""
    return {name: str(e.get("title") or name) for name, e in entries(group).items()}


def fine_tuning_methods() -> list[str]:
    """Methods that train weights of a real storage type: not a baseline, not BitFit, not a simulated data type
    (what the memory planner plans)."""
    keep = [(n, e) for n, e in entries("method").items()
            if str(e.get("baseline", "none")) == "none" and not e.get("bias_only") and
            str(e.get("fake_quant", "none")) == "none"]
    bits = {"none": 0, "int8": 1, "fp4": 2, "nf4": 3}  # full fine-tuning, then by storage: wide to narrow
    return [n for n, e in sorted(keep, key=lambda x: (bool(x[1].get("adapter", True)),
                                                       bits.get(str(x[1].get("quant", "none")), 9),
                                                       bool(x[1].get("double_quant")), x[0]))]
