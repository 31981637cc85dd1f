"""Wall time of the everyday commands on this machine: `make run`, `make sweep` and `make test`, each timed the way a
user runs it (its own processes, the Makefile's settings), with the run's outputs and the sweep's report written into
a temporary folder, so nothing the user has recorded or committed is touched.

    python -m bench.commands [commands=run,sweep,test] [tag=NAME] [keep=DIR] [out=reports/bench]

Writes `<out>/commands_<tag>.json` (tag, as for `make bench`: avx2 when ATEN_CPU_CAPABILITY=avx2, else the dtype
`method.compute_dtype=auto` picks here); `python -m bench.report` shows it in that CPU class's section. With `keep`,
the temporary folder (outputs/ and reports/ of the timed run and sweep) is moved there instead of removed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness.cli import key_value_args

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = ("run", "sweep", "test")


def cpu_class() -> str:
    """avx2 when torch is held to AVX2 (an AVX2-only CPU, or its emulation), else what `auto` computes in here."""
    import torch

    from harness.methods import compute_dtype

    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        return "avx2"
    return "bf16" if compute_dtype("auto") == torch.bfloat16 else "fp32"


def outcome(name: str, log: str, outputs: Path) -> dict:
    """What the command produced, read back: the run's record, the sweep's records, pytest's summary line."""
    if name == "test":
        m = re.findall(r"^=*\s*(\d+ (?:passed|failed)[^\n]*?) in ([0-9.]+)s", log, re.M)
        return {"pytest": m[-1][0] if m else None, "pytest_s": float(m[-1][1]) if m else None}
    # make run writes under runs/, a sweep under sweeps/ (both into the same temporary output root)
    recs = [json.loads(p.read_text()) for p in (outputs / ("runs" if name == "run" else "sweeps")).rglob("record.json")]
    if name == "run" and recs:
        from harness.store import headline

        r = recs[0]
        metric, value = headline(r)
        return {"metric": metric, "value": value, "split": ((r.get("metrics") or {}).get("headline") or {}).get(
            "split"), "tokens_per_s": (r.get("throughput") or {}).get("tokens_per_s"),
            "compute_dtype": (r.get("method") or {}).get("compute_dtype")}
    return {"records": len(recs), "ok": sum(r.get("status") == "ok" for r in recs)}


def time_command(name: str, tmp: Path) -> dict:
    outputs, reports = tmp / "outputs", tmp / "reports"
    cmd = ["make", name] + ([f"REPORTS={reports}"] if name == "sweep" else [])
    env = {**os.environ, "HARNESS_OUTPUT_ROOT": str(outputs)}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.perf_counter() - t0
    (tmp / f"{name}.log").write_text(p.stdout)
    return {"command": " ".join(cmd), "wall_s": round(wall, 1), "rc": p.returncode, **outcome(name, p.stdout, outputs)}


def main(argv: list[str] | None = None) -> int:
    from bench.throughput import machine

    ap = argparse.ArgumentParser(prog="python -m bench.commands", description=__doc__.split("\n\n")[0])
    ap.add_argument("--commands", default=",".join(COMMANDS), help=f"comma list of {', '.join(COMMANDS)}")
    ap.add_argument("--tag", default="", help="the file's name: commands_<tag>.json (default: the CPU class)")
    ap.add_argument("--keep", default=None, help="move the temporary outputs/ and reports/ here")
    ap.add_argument("--out", default=str(ROOT / "reports" / "bench"))
    a = ap.parse_args(key_value_args(sys.argv[1:] if argv is None else list(argv), ap))
    names = [c for c in a.commands.split(",") if c]
    bad = sorted(set(names) - set(COMMANDS))
    if bad:
        ap.error(f"commands={a.commands!r}: {bad} not among {list(COMMANDS)}")
    tag = a.tag or cpu_class()
    res = {"tag": tag, "machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
           "git": subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=ROOT, capture_output=True,
                                 text=True).stdout.strip() or None,
           "env": {k: os.environ.get(k) for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "GOMP_SPINCOUNT",
                                                  "OMP_WAIT_POLICY")},
           "commands": {}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"commands_{tag}.json"
    tmp = Path(tempfile.mkdtemp(prefix="lora-harness-commands-"))
    try:
        for name in names:
            print(f"[bench.commands] make {name} ...", flush=True)
            res["commands"][name] = time_command(name, tmp)
            print(f"[bench.commands] make {name}: {res['commands'][name]}", flush=True)
            res["finished"] = time.strftime("%Y-%m-%d %H:%M:%S")
            path.write_text(json.dumps(res, indent=1) + "\n")  # after each command: a later failure keeps it
    finally:
        if a.keep:
            shutil.move(str(tmp), a.keep)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(path)
    return 0 if all(c["rc"] == 0 for c in res["commands"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
