"""L2 PGD's random start against a peer's plain L2 PGD that starts at x (ART 1.20, ``num_random_init=0``).

Issue 9: with a random start uniform in the L2 ball (which in 784 dimensions lies almost on
its surface), our L2 PGD was about 1.6 points weaker than ART's plain L2 PGD on the same
LeNet-5. Two fixes are measured side by side on the same images, eps, steps and step size:

  (a) the first restart starts at x, later restarts at random points of the ball (what robust does now);
  (b) every restart starts at a random point of a smaller ball (radius eps x FRACTION).

Prints adversarial accuracy (lower is stronger) for 1 and 3 restarts. Always exits 0.

Usage:
    python bench/bench_l2_start.py [--n 1000] [--eps 1.5] [--steps 40] [--model lenet.keras] [--no-art]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("ROBUST_DATA_DIR", str(_SHARED))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from bench_sweep import _lenet  # noqa: E402


def _shrunk(fraction: float):
    """PGD whose random starts lie in the ball of radius ``fraction * eps`` (fix (b))."""
    from robust.attacks import PGD

    class ShrunkStartPGD(_whole_ball()):
        def start(self, ctx):
            return super().start(ctx._replace(eps=ctx.eps * fraction))

    return ShrunkStartPGD


def _whole_ball():
    """PGD as it was before the fix: every restart, the first too, starts at a uniform point of the L2 ball."""
    from robust.attacks import PGD

    class WholeBallPGD(PGD):
        def start(self, ctx):  # every run starts as a later one does: at a random point
            return super().start(ctx._replace(run=ctx.run + 1))

    return WholeBallPGD


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=1.5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default=None)
    parser.add_argument("--no-art", action="store_true")
    args = parser.parse_args(argv)

    from robust.attacks import PGD
    from robust.data import balanced_indices, load_dataset

    data = load_dataset("mnist")
    model = _lenet(data, args.model)
    idx = balanced_indices(data.y_test, args.n, seed=1)
    x, y = data.x_test[idx], data.y_test[idx].astype(np.int64)
    common = {"eps": args.eps, "norm": "2", "steps": args.steps, "seed": 0}
    rows = []

    def run(label, attack):
        t = time.perf_counter()
        acc = attack(model, x, y, progress=False).adversarial_accuracy
        rows.append((label, acc, time.perf_counter() - t))
        print(f"{label:<58} {100 * acc:6.2f}%  ({rows[-1][2]:.0f} s)", flush=True)

    print(f"LeNet-5, {len(x)} MNIST test images, L2 PGD-{args.steps}, eps {args.eps}, step 2.5 eps / steps")
    if not args.no_art:
        rows.append(("ART ProjectedGradientDescent, norm 2, starts at x", _art(model, x, y, args), 0.0))
        print(f"{rows[-1][0]:<58} {100 * rows[-1][1]:6.2f}%", flush=True)
    run("ours, starts at x (= (a) with 1 restart)", PGD(random_start=False, **common))
    run("ours, random start in the whole ball (before)", _whole_ball()(**common))
    for fraction in (0.5, 0.25, 0.1):
        run(f"(b) random start, radius {fraction:g} eps", _shrunk(fraction)(**common))
    for restarts in (3,):
        run(f"(a) {restarts} restarts: first at x, then random (robust now)", PGD(restarts=restarts, **common))
        run(f"(b) {restarts} restarts, radius 0.25 eps", _shrunk(0.25)(restarts=restarts, **common))
        run(f"before: {restarts} restarts, whole ball", _whole_ball()(restarts=restarts, **common))
    return 0


def _art(model, x, y, args) -> float:
    import keras
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    clf = TensorFlowV2Classifier(model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
                                 loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    adv = ProjectedGradientDescent(clf, norm=2, eps=args.eps, eps_step=2.5 * args.eps / args.steps,
                                   max_iter=args.steps, num_random_init=0, batch_size=256,
                                   verbose=False).generate(x, y=y)
    return float(np.mean(np.argmax(clf.predict(adv, batch_size=256), axis=1) == y))


if __name__ == "__main__":
    raise SystemExit(main())
