"""Wall time of `robust run --ray` (a new local Ray on this machine) against the same study in-process.

Target (issue 11): on the default study (`mnist`), `--ray` costs at most 1.15x
the in-process wall time. Both runs are the CLI in a fresh process each, into
fresh folders; the in-process run goes first and trains the models, which
the Ray run then trains again (nothing is reused). The two results.json are
compared too (they must be equal up to wall-clock fields and the engine).

The default study trains three models for 6 epochs on full MNIST: on 2 shared
cores that is most of an hour per run. ``--reduced`` runs it on a class-balanced
training subset and fewer epochs, fooling classes and test images (the same
models, attacks and eps grid), which is what fits beside other work.
Also prints, per stage, the in-process seconds per cell measured from
results.json (training per model, attack per model x attack x eps), the
numbers the README's 8-GPU plan is sized from.

Usage:
    python bench/bench_ray.py [--spec mnist] [--reduced] [--train-limit 6000] [--epochs 1] [--test-limit 300]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("ROBUST_DATA_DIR", str(_SHARED))

TARGET = 1.15


def _spec_text(args) -> str:
    from importlib.resources import files

    text = (files("robust.specs") / f"{args.spec}.toml").read_text() if not args.spec.endswith(".toml") \
        else Path(args.spec).read_text()
    if args.reduced:
        text = re.sub(r"(?m)^test_limit = \d+", f"test_limit = {args.test_limit}", text)
        text = re.sub(r"(?m)^\[data\]\n", f"[data]\ntrain_limit = {args.train_limit}\n", text, count=1)
        text = re.sub(r"(?m)^epochs = \d+", f"epochs = {args.epochs}", text)
        text = re.sub(r'(?m)^classes = "all"', "classes = [3, 7]", text)
    return text


def _run(spec: Path, out: Path, extra: list[str]) -> float:
    """Wall seconds of one CLI run; prints the 1-minute load average sampled every 5 s while it ran."""
    cmd = [sys.executable, "-m", "robust.cli", "run", str(spec), "--out", str(out), "--no-progress", *extra]
    t0 = time.perf_counter()
    loads = []
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        while proc.poll() is None:
            loads.append(os.getloadavg()[0])
            time.sleep(5)
        seconds = time.perf_counter() - t0
        log.seek(0)
        output = log.read()
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{output[-4000:]}")
    print(f"  {' '.join(extra) or 'in-process'}: {seconds:.1f} s wall (load average while it ran: mean "
          f"{sum(loads) / len(loads):.1f}, {min(loads):.1f}-{max(loads):.1f})", flush=True)
    if "Token authentication" in output:
        print("  (Ray's token-authentication notice reached the output)")
    return seconds


def _per_cell(results: dict) -> None:
    models = results["models"]
    for key, m in models.items():
        print(f"  train {m['label']}: {m['train_seconds']:.1f} s")
    for r in results["records"]:
        if r["eps"] > 0:
            print(f"  attack {models[r['model']]['label']} x {r['attack_key']} eps={r['eps']:g}: {r['seconds']:.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default="mnist", help="a built-in spec name or a .toml file")
    parser.add_argument("--reduced", action="store_true", help="a smaller version of the study (see above)")
    parser.add_argument("--train-limit", type=int, default=6000)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--test-limit", type=int, default=300)
    parser.add_argument("--shard-size", type=int, default=None)
    args = parser.parse_args()

    from robust.study import strip_wall_clock

    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.toml"
        spec.write_text(_spec_text(args))
        print(f"study {args.spec}{' (reduced)' if args.reduced else ''}, load {os.getloadavg()[0]:.1f}", flush=True)
        local = _run(spec, Path(tmp) / "local", [])
        ray = _run(spec, Path(tmp) / "ray", ["--ray"] + (["--shard-size", str(args.shard_size)]
                                                         if args.shard_size else []))
        a, b = (strip_wall_clock(json.loads((Path(tmp) / d / "results.json").read_text())) for d in ("local", "ray"))
        for r in (a, b):
            r["run"].pop("engine", None), r["run"].pop("ray", None)
        same = a == b
        print("per cell, in-process:")
        _per_cell(json.loads((Path(tmp) / "local" / "results.json").read_text()))
    ratio = ray / local
    print(f"--ray / in-process wall time: {ratio:.2f}x (target <= {TARGET}x): {'met' if ratio <= TARGET else 'MISSED'}")
    print(f"results.json equal up to wall-clock fields: {same}")
    sys.exit(0 if ratio <= TARGET and same else 1)


if __name__ == "__main__":
    main()
