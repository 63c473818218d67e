"""Keras backends side by side: PGD-40 and one training epoch of LeNet-5 on MNIST, TensorFlow vs JAX and PyTorch.

Targets (issue 10), on 2 CPU cores:

* PGD-40 (L-inf, eps 0.1, random start) on LeNet-5, 1,000 MNIST test images:
  the JAX backend's time at most 1.3x TensorFlow's, accuracy equal within 0.5 points;
* one epoch of standard LeNet-5 training on full MNIST: JAX at most 1.3x TensorFlow;
* PyTorch's figures printed beside them (no target; its kernels run eagerly).

Keras picks its backend at import, so each backend runs in its own process
(this file with ``--worker``). The LeNet-5 attacked is trained once, under
TensorFlow (one epoch on 12,000 images), and the same ``.keras`` file is
attacked under every backend. Each attack is timed twice: the first call
compiles (``tf.function`` tracing, ``jax.jit`` / XLA compilation), the second
reuses the compiled kernel. Figures are printed, never asserted.

    python bench/bench_backends.py                 # both benchmarks, every installed backend
    python bench/bench_backends.py --only pgd --images 1000

Wall time is the target's measure; on shared cores the CPU time of each
process (all its threads) is printed beside it, as the other load inflates
wall time unevenly between the backends' turns.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BACKENDS = ("tensorflow", "jax", "torch")


def worker_train_model(out: str) -> dict:
    import keras

    from robust.data import load_dataset
    from robust.models import build_model

    data = load_dataset("mnist").limited(12000, seed=0)
    keras.utils.set_random_seed(0)
    model = build_model("lenet5", data.input_shape, data.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(data.x_train, data.y_train, batch_size=64, epochs=1, verbose=0)
    model.save(out)
    return {}


def worker_pgd(model_path: str, images: int, batch_size: int) -> dict:
    import keras
    import numpy as np

    from robust.attacks import PGD
    from robust.data import balanced_indices, load_dataset

    data = load_dataset("mnist")
    idx = balanced_indices(data.y_test, images, seed=1)
    x, y = data.x_test[idx], data.y_test[idx]
    model = keras.saving.load_model(model_path, compile=False)
    attack = PGD(eps=0.1, steps=40, seed=0)
    times, cpu, accs = [], [], []
    for _ in range(2):
        start, start_cpu = time.perf_counter(), time.process_time()
        result = attack(model, x, y, batch_size=batch_size, progress=False)
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
        accs.append(float(np.mean(result.adv_pred == y)))
    return {"first_s": times[0], "warm_s": times[1], "warm_cpu_s": cpu[1], "accuracy": accs[1],
            "clean": float(np.mean(result.clean_pred == y))}


def worker_train_epoch(batch_size: int) -> dict:
    from robust.data import load_dataset
    from robust.training import train

    data = load_dataset("mnist")
    result = train("lenet5", data, epochs=1, batch_size=batch_size, seed=0, progress=False)
    return {"epoch_s": result.epoch_seconds[0], "epoch_cpu_s": result.epoch_cpu_seconds[0],
            "test_accuracy": result.card["test_accuracy"], "images": result.card["train_size"]}


def run_worker(backend: str, *args: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, __file__, "--worker", *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"bench_backends: the {backend} worker failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ratio_line(name: str, figures: dict, key: str, target: float | None = None) -> str:
    """Each backend's figure and its ratio to TensorFlow's; the issue's target applies to JAX (PyTorch: printed only)."""
    base = figures.get("tensorflow", {}).get(key)
    parts = [f"{b} {f[key]:.2f} s" for b, f in figures.items()]
    line = f"{name}: " + ", ".join(parts)
    for b, f in figures.items():
        if b != "tensorflow" and base:
            line += f"; {b}/tensorflow {f[key] / base:.2f}x" + (f" (target <= {target}x)" if target and b == "jax" else "")
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("pgd", "train"), help="run one of the two benchmarks")
    parser.add_argument("--images", type=int, default=1000, help="test images attacked (default 1000)")
    parser.add_argument("--batch-size", type=int, default=256, help="attack batch size (default 256)")
    parser.add_argument("--train-batch-size", type=int, default=128, help="training batch size (default 128)")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        kind, *rest = args.worker
        fn = {"model": worker_train_model, "pgd": worker_pgd, "train": worker_train_epoch}[kind]
        typed = [int(v) if v.isdigit() else v for v in rest]
        print(json.dumps(fn(*typed)))
        return

    backends = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"bench_backends: backends {', '.join(backends)}; {os.cpu_count()} CPUs, load {load:.1f}", flush=True)
    if args.only in (None, "pgd"):
        with tempfile.TemporaryDirectory() as tmp:
            model = str(Path(tmp) / "lenet5.keras")
            run_worker("tensorflow", "model", model)
            figures = {b: run_worker(b, "pgd", model, str(args.images), str(args.batch_size)) for b in backends}
        print(f"PGD-40, LeNet-5 trained under TensorFlow, {args.images} MNIST images, batch {args.batch_size}:")
        for b, f in figures.items():
            print(f"  {b}: first call {f['first_s']:.2f} s ({'eager' if b == 'torch' else 'compiles'}), "
                  f"warm {f['warm_s']:.2f} s "
                  f"({f['warm_cpu_s']:.1f} CPU s), "
                  f"clean {f['clean']:.3f}, PGD accuracy {f['accuracy']:.3f}")
        print("  " + ratio_line("warm", figures, "warm_s", 1.3))
        print("  " + ratio_line("warm, CPU time (all threads; fairer on shared cores)", figures, "warm_cpu_s"))
        print("  " + ratio_line("first call", figures, "first_s"))
        for b in ("jax", "torch"):
            if b in figures and "tensorflow" in figures:
                gap = abs(figures[b]["accuracy"] - figures["tensorflow"]["accuracy"]) * 100
                print(f"  accuracy gap {b} vs tensorflow: {gap:.2f} points (target <= 0.5)", flush=True)
    if args.only in (None, "train"):
        figures = {b: run_worker(b, "train", str(args.train_batch_size)) for b in backends}
        print(f"One epoch of LeNet-5 on full MNIST (robust.training.train, batch {args.train_batch_size}):")
        for b, f in figures.items():
            print(f"  {b}: {f['epoch_s']:.1f} s ({f['epoch_cpu_s']:.1f} CPU s) for {f['images']:,} images "
                  "(the first epoch compiles), "
                  f"test accuracy {f['test_accuracy']:.4f}")
        print("  " + ratio_line("epoch", figures, "epoch_s", 1.3))
        print("  " + ratio_line("epoch, CPU time", figures, "epoch_cpu_s"), flush=True)


if __name__ == "__main__":
    main()
