"""Which offline MNIST default reaches the target: more images shipped, or more steps on few (issue 8).

A fresh machine with no network and no ``ROBUST_DATA_DIR`` trains on the MNIST
images shipped inside the package. This script trains LeNet-5 exactly as the
default study does (``robust/specs/mnist.toml``: its epochs, batch size and
learning rate) on class-balanced, seeded subsets of the training split of
several sizes, scheduled by epochs and by steps (as many optimizer steps as the
full-data run), and prints for each: the clean accuracy on the full 10,000-image
test split (target: at least 98.5%), the training time, and the size of that
subset compressed with xz (what shipping it costs in the wheel).

Needs full MNIST (``ROBUST_DATA_DIR`` or ``../shared/data``). Run from the
repository root (about 20 minutes on 2 quiet cores):

    python bench/bench_offline.py
    python bench/bench_offline.py --only 6000:steps,20000
"""

from __future__ import annotations

import argparse
import dataclasses
import lzma
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
_SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")
if os.path.isdir(_SHARED):
    os.environ.setdefault("ROBUST_DATA_DIR", os.path.normpath(_SHARED))

TARGET = 0.985
CANDIDATES = ("6000", "6000:steps", "20000", "20000:steps", "30000", "60000")


def default_training() -> dict:
    import tomllib
    from importlib import resources

    spec = tomllib.loads((resources.files("robust.specs") / "mnist.toml").read_text())
    return spec["training"]


def run(candidate: str, full, training: dict, seed: int) -> str:
    from robust.data import balanced_indices
    from robust.training import train

    size, _, how = candidate.partition(":")
    n = int(size)
    idx = balanced_indices(full.y_train, n, seed)
    data = dataclasses.replace(full, x_train=full.x_train[idx], y_train=full.y_train[idx],
                               source=f"{n} balanced training images")
    epochs = training["epochs"]
    if how == "steps":  # as many optimizer steps as the full-data run takes
        epochs = round(epochs * len(full.x_train) / n)
    packed = lzma.compress((full.x_train[idx] * 255).round().astype("uint8").tobytes(), preset=6)
    start = time.perf_counter()
    result = train("lenet5", data, epochs=epochs, batch_size=training["batch_size"], lr=training["lr"],
                   seed=seed, progress=False)
    wall = time.perf_counter() - start
    acc = result.card["test_accuracy"]
    return (f"{candidate:>12}: {n:>6} images x {epochs:>2} epochs: test accuracy {acc:.4f} on "
            f"{len(full.x_test)} ({'meets' if acc >= TARGET else 'MISSES'} {TARGET}), train {wall:6.0f} s, "
            f"xz {len(packed) / 1e6:.1f} MB; load {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(CANDIDATES), help="comma-separated candidates")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from robust.data import load_dataset

    full = load_dataset("mnist")
    training = default_training()
    print(f"{full.describe()}; default training {training}", flush=True)
    for candidate in args.only.split(","):
        print(run(candidate.strip(), full, training, args.seed), flush=True)


if __name__ == "__main__":
    main()
