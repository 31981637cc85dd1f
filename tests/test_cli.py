"""One command-line style: key=value settings reach every entry point's options; the --flag spellings still work."""

from __future__ import annotations

import argparse

import pytest

from harness.cli import key_value_args, options_and_overrides


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser()
    ap.add_argument("--experiment", action="append")
    ap.add_argument("--root", default="outputs")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--ranks", type=int, nargs=2, default=(8, 64))
    ap.add_argument("run_dir", nargs="?")
    return ap


def test_key_value_settings_parse_as_their_flags():
    ap = _parser()
    kv = ap.parse_args(key_value_args(["experiment=t6", "experiment=t5", "root=/x", "plots=false", "ranks=4,16",
                                       "runs/a=b"], ap))
    flags = ap.parse_args(["--experiment", "t6", "--experiment", "t5", "--root", "/x", "--no-plots", "--ranks", "4",
                           "16", "runs/a=b"])
    assert vars(kv) == vars(flags) == {"experiment": ["t6", "t5"], "root": "/x", "no_plots": True, "ranks": [4, 16],
                                       "run_dir": "runs/a=b"}
    assert ap.parse_args(key_value_args(["no_plots=true"], ap)).no_plots is True
    assert ap.parse_args(key_value_args(["plots=true"], ap)).no_plots is False
    with pytest.raises(SystemExit, match="plots='maybe' is not valid"):
        key_value_args(["plots=maybe"], ap)


def test_hydra_entry_points_take_their_own_options_as_key_value():
    from harness.search import parse_args

    from harness.plan import _parser

    kv, rest = options_and_overrides(_parser(), ["model=x", "json=true", "all_methods=true", "batch=false",
                                                 "gpus=24,80", "train.lr=1", "plan.device=cpu"])
    flags, rest2 = options_and_overrides(_parser(), ["model=x", "--json", "--all-methods", "--no-batch", "--gpus",
                                                     "24,80", "train.lr=1", "plan.device=cpu"])
    assert kv == flags and rest == rest2 == ["model=x", "train.lr=1", "plan.device=cpu"]
    assert kv.json and kv.all_methods and kv.no_batch and kv.gpus == (24.0, 80.0)
    with pytest.raises(SystemExit):
        options_and_overrides(_parser(), ["model=x", "--jsn"])  # an unknown option, refused with the usage
    with pytest.raises(SystemExit):
        options_and_overrides(_parser(), ["gpus=big"])
    kv = parse_args(["search=mrpc_minilm", "workers=2", "confirm=true", "report=false", "out=/tmp/r"])
    flags = parse_args(["search=mrpc_minilm", "--workers", "2", "--confirm", "--no-report", "--out", "/tmp/r"])
    assert kv == flags and kv[0]["workers"] == 2 and kv[0]["confirm"] and kv[0]["no_report"]
