"""A PGD-40 sweep over an eps grid, against six independent runs of ours and of ART 1.20, in one process.

Target (issue 9): the sweep at eps 0, .05, .1, .15, .2, .3 with PGD-40 on
LeNet-5 and 1,000 MNIST test images is at least 3x faster than six
independent PGD-40 runs, with equal or lower accuracy at every eps, and at
least 6x faster than ART's six runs. The sweep attacks each eps only on the
points no smaller eps broke (robust.evaluation.evaluate_attack); the
independent runs attack every point at every eps.

Prints the times, the ratios and both accuracy curves; exits 1 when a target is missed.

Usage:
    python bench/bench_sweep.py [--n 1000] [--model lenet.keras] [--no-art]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if _SHARED.is_dir():
    os.environ.setdefault("ROBUST_DATA_DIR", str(_SHARED))

import numpy as np  # noqa: E402

GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


def _lenet(data, path: str | None):
    import keras

    if path:
        return keras.saving.load_model(path, compile=False)
    from robust.models import build_model

    keras.utils.set_random_seed(0)
    small = data.limited(12000, seed=0)
    model = build_model("lenet5", data.input_shape, data.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(small.x_train, small.y_train, batch_size=64, epochs=1, verbose=0)
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--model", default=None, help="a .keras LeNet-5 (default: train one for 1 epoch)")
    parser.add_argument("--no-art", action="store_true")
    args = parser.parse_args(argv)

    from robust.attacks import PGD
    from robust.data import balanced_indices, load_dataset
    from robust.evaluation import evaluate_attack

    data = load_dataset("mnist")
    model = _lenet(data, args.model)
    idx = balanced_indices(data.y_test, args.n, seed=1)
    x, y = data.x_test[idx], data.y_test[idx].astype(np.int64)
    size = lambda e: 2.5 * e / args.steps  # noqa: E731  PGD's default step size
    evaluate_attack(model, "pgd", x[:64], y[:64], [0.1], steps=args.steps)  # compile once, for both of ours

    t = time.perf_counter()
    swept = evaluate_attack(model, "pgd", x, y, list(GRID), steps=args.steps)
    sweep_s = time.perf_counter() - t
    t = time.perf_counter()
    alone = [PGD(eps=e, steps=args.steps)(model, x, y, progress=False).adversarial_accuracy for e in GRID]
    alone_s = time.perf_counter() - t
    print(f"{len(x)} MNIST test images, LeNet-5, PGD-{args.steps} L-inf at eps {GRID}")
    print(f"{'eps':>6} {'sweep acc':>10} {'6 runs acc':>11}")
    for e, row, a in zip(GRID, swept, alone):
        print(f"{e:>6g} {100 * row['adversarial_accuracy']:>9.1f}% {100 * a:>10.1f}%")
    ratio = alone_s / sweep_s
    no_weaker = all(r["adversarial_accuracy"] <= a + 1e-12 for r, a in zip(swept, alone))
    print(f"sweep {sweep_s:.1f} s; six independent runs {alone_s:.1f} s: {ratio:.2f}x faster (target >= 3); "
          f"accuracy equal or lower at every eps: {no_weaker}")
    ok = ratio >= 3 and no_weaker
    if not args.no_art:
        art_s = _art_runs(model, x, y, args.steps, size)
        print(f"ART ProjectedGradientDescent, six runs: {art_s:.1f} s: the sweep is {art_s / sweep_s:.2f}x faster "
              "(target >= 6)")
        ok = ok and art_s / sweep_s >= 6
    return 0 if ok else 1


def _art_runs(model, x, y, steps, size) -> float:
    import keras
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    clf = TensorFlowV2Classifier(model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
                                 loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    t = time.perf_counter()
    for e in GRID:
        if e > 0:
            ProjectedGradientDescent(clf, norm=np.inf, eps=e, eps_step=size(e), max_iter=steps, num_random_init=1,
                                     batch_size=256, verbose=False).generate(x, y=y)
    return time.perf_counter() - t


if __name__ == "__main__":
    raise SystemExit(main())
