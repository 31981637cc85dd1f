"""python -m harness.search: the command line (argument parsing, the study's config, workers, report)."""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from harness.config import ConfigError, compose
from harness.search.space import (DEFAULT_SEARCH, _key, describe_pruner, describe_sampler, directions,
                                  merge_overrides, validate_search)
from harness.search.storage import public_url, storage_url, worker_id
from harness.search.worker import RunObjective, confirm, run_worker

if TYPE_CHECKING:
    from harness.config import Config

log = logging.getLogger("harness.search")


# ============================================================================================ entry point
USAGE = """usage: python -m harness.search [search=<name>] [search.KEY=VALUE ...] [run overrides ...]
                          [workers=N] [confirm=true] [report_only=true] [report=false] [out=reports]
       (the --workers N, --confirm, --report-only, --no-report and --out spellings work too)"""


def _workers(v: str) -> int:
    if not v.isdigit() or int(v) < 1:
        raise argparse.ArgumentTypeError(f"{v!r} is not valid: give a whole number >= 1")
    return int(v)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m harness.search", usage=USAGE.removeprefix("usage: "), description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ap.add_argument("--workers", type=_workers, default=1, help="worker processes (default 1)")
    ap.add_argument("--confirm", action="store_true", help="rerun the best trials with more seeds")
    ap.add_argument("--report-only", action="store_true", help="only write the study's report")
    ap.add_argument("--no-report", action="store_true", help="write no report")
    ap.add_argument("--out", default="reports", help="reports folder (default reports)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # internal: a worker another started
    return ap


def parse_args(argv: list[str]) -> tuple[dict, list[str]]:
    """(options, Hydra overrides): the options in either spelling (`workers=2` or `--workers 2`)."""
    from harness.cli import options_and_overrides

    args, overrides = options_and_overrides(_parser(), argv)
    opts = vars(args)
    if not any(_key(o) == "search" for o in overrides):
        overrides.insert(0, f"search={DEFAULT_SEARCH}")
    return opts, overrides


def load(overrides: list[str]):
    """(search spec, the trials' base overrides, a composed run config for checks) from the command line."""
    is_search = [_key(o) == "search" or _key(o).startswith("search.") for o in overrides]
    search_ovr = merge_overrides([o for o, s in zip(overrides, is_search) if s])
    run_ovr = [o for o, s in zip(overrides, is_search) if not s]
    spec = compose(search_ovr).search
    if spec is None:
        raise ConfigError("no search space selected: pass search=<name> (conf/search/)")
    base = merge_overrides(search_ovr, list(spec.base), run_ovr)
    cfg = compose(base)
    return cfg.search, base, cfg, run_ovr


def main(argv: list[str] | None = None) -> int:
    from harness.runner import reexec_with_process_env

    reexec_with_process_env("harness.search")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    for h in logging.getLogger().handlers:  # the console shows one line per trial; runs log to their output.log
        h.setLevel(logging.WARNING)
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        opts, overrides = parse_args(argv)
        spec, base, cfg, run_ovr = load(overrides)
        validate_search(spec, cfg, base, run_ovr)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    url = storage_url(spec, cfg.paths.output_root)
    if opts["report_only"]:
        return _report(spec, url, cfg, opts)
    if opts["confirm"]:
        rc = confirm(spec, url, base, opts["workers"])
        return rc if rc or opts["no_report"] else _report(spec, url, cfg, opts)
    workers = opts["workers"]
    if workers > 1 and not any(_key(o) == "train.threads" for o in base):
        base = merge_overrides(base, [f"train.threads={max(1, (os.cpu_count() or 1) // workers)}"])
    children = []
    if not opts["worker"]:
        print(f"[{spec.study}] study in {public_url(url)}: {spec.n_trials} trials, {workers} worker(s); "
              f"objective {spec.objective.metric} ({directions(spec)[0]}); pruner "
              f"{'none (two objectives)' if spec.second_objective is not None else spec.pruner.name}", flush=True)
        for _ in range(workers - 1):
            children.append(subprocess.Popen([sys.executable, "-m", "harness.search", *base, "--worker"]))
    objective = RunObjective(spec, base, cfg.paths.output_root, url)
    rc = 0
    try:
        c = run_worker(spec, url, objective, echo=lambda s: print(s, flush=True),
                       extra_attrs={"base": [o for o in base if _key(o) != "search" and not o.startswith("search.")],
                                    "command": "python -m harness.search " + " ".join(
                                        o for o in overrides if not o.startswith("paths.")),
                                    "sampler": describe_sampler(spec), "pruner": describe_pruner(spec),
                                    "created_by": worker_id()})
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        rc = 1
    finally:
        for p in children:
            rc = max(rc, p.wait())
    if opts["worker"]:
        return rc
    if rc == 0:
        print(f"[{spec.study}] done: {c['COMPLETE']} complete, {c['PRUNED']} pruned, {c['FAIL']} failed", flush=True)
    if not opts["no_report"]:
        rc = max(rc, _report(spec, url, cfg, opts))
    return rc


def _report(spec, url: str, cfg: Config, opts) -> int:
    from harness.report.search import render_search
    from harness.store import Store

    path = render_search(spec.study, url, Store(cfg.paths.output_root), Path(opts["out"]))
    print(path)
    return 0

