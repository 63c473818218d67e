"""APGD (and optionally Square) against ART 1.20, side by side: throughput and accuracy under attack.

On LeNet-5 and real MNIST test images, in one process: our APGD-CE and
APGD-DLR against ART's ``AutoProjectedGradientDescent`` with the reference's
settings (``eps_step = 2 * eps``, one random start, the same iterations),
and the floor (steps x one compiled gradient pass over the same images).
With ``--square-queries Q`` also our Square against ART's ``SquareAttack``
at the same number of iterations. Runs are interleaved ``--repeats`` times
and the fastest of each is compared; our compiled loops are built in a
warm-up call first. Prints ratios; there is no target to miss, so it always
exits 0 (the adversarial accuracies are checked by tests/test_apgd.py and
tests/test_square.py).

Usage:
    python bench/bench_apgd.py [--n 1000] [--steps 100] [--eps 0.1] [--batch-size 256] [--repeats 1]
                               [--square-queries 1000] [--model lenet.keras]
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

from bench_attacks import _timed, _train_lenet  # noqa: E402


def _contenders(model, classifier, x, y, args):
    from art.attacks.evasion import AutoProjectedGradientDescent, SquareAttack

    from robust.attacks import APGD, Square

    eps, steps, bs = args.eps, args.steps, args.batch_size
    out = {}
    for loss, art_loss in (("ce", "cross_entropy"), ("dlr", "difference_logits_ratio")):
        out[f"ours APGD-{loss.upper()}"] = (
            lambda loss=loss: APGD(eps=eps, steps=steps, loss=loss)(model, x, y, batch_size=bs, progress=False))
        out[f"ART APGD-{loss.upper()}"] = (lambda art_loss=art_loss: AutoProjectedGradientDescent(
            classifier, norm=np.inf, eps=eps, eps_step=2 * eps, max_iter=steps, nb_random_init=1, batch_size=bs,
            loss_type=art_loss, verbose=False).generate(x, y=y))
    if args.square_queries:
        q = args.square_queries
        out["ours Square"] = lambda: Square(eps=eps, queries=q)(model, x, y, batch_size=bs, progress=False)
        out["ART Square"] = lambda: SquareAttack(classifier, norm=np.inf, eps=eps, max_iter=q, nb_restarts=1,
                                                 batch_size=bs, verbose=False).generate(x, y=y)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="images attacked")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--square-queries", type=int, default=0, help="also compare Square at this many queries")
    parser.add_argument("--model", default=None, help="a .keras LeNet-5 to use instead of training one (1 epoch)")
    args = parser.parse_args(argv)

    import keras
    import tensorflow as tf
    from art.estimators.classification import TensorFlowV2Classifier

    import art
    from robust.attacks import APGD, Square
    from robust.data import balanced_indices, load_dataset

    data = load_dataset("mnist")
    model = keras.saving.load_model(args.model, compile=False) if args.model else _train_lenet(data)
    idx = balanced_indices(data.y_test, args.n, seed=1)
    x, y = data.x_test[idx], data.y_test[idx].astype(np.int64)
    print(f"{len(x)} MNIST test images, LeNet-5 ({model.count_params():,} weights), APGD-{args.steps} L-inf "
          f"eps={args.eps}, batch {args.batch_size}; TensorFlow {tf.__version__}, Keras {keras.__version__}, "
          f"ART {art.__version__}; {os.cpu_count()} CPUs, best of {args.repeats}")
    classifier = TensorFlowV2Classifier(model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
                                        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

    @tf.function
    def gradient_pass(xb, yb):
        with tf.GradientTape() as tape:
            tape.watch(xb)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(yb, model(xb, training=False)))
        return tape.gradient(loss, xb)

    batches = [(tf.constant(x[s:s + args.batch_size]), tf.constant(y[s:s + args.batch_size].astype(np.int32)))
               for s in range(0, len(x), args.batch_size)]

    def floor():
        for _ in range(args.steps):
            for xb, yb in batches:
                gradient_pass(xb, yb).numpy()

    contenders = {"floor (steps x 1 gradient pass)": floor, **_contenders(model, classifier, x, y, args)}
    for loss in ("ce", "dlr"):  # warm-up: build our compiled loops once
        APGD(eps=args.eps, steps=args.steps, loss=loss)(model, x[:8], y[:8], progress=False)
    if args.square_queries:
        Square(eps=args.eps, queries=args.square_queries)(model, x[:8], y[:8], progress=False)
    floor()

    wall = {k: [] for k in contenders}
    acc = {}
    np.random.seed(0)
    load = os.getloadavg()
    for repeat in range(args.repeats):
        for name, fn in contenders.items():
            seconds, _, out = _timed(fn)
            wall[name].append(seconds)
            if repeat == 0 and out is not None:
                x_adv = out.x_adv if hasattr(out, "x_adv") else out
                acc[name] = float(np.mean(np.argmax(model.predict(x_adv, verbose=0, batch_size=500), 1) == y))
    load = [max(a, b) for a, b in zip(load, os.getloadavg())]
    print(f"load average during the runs: up to {load[0]:.1f} (1 min) on {os.cpu_count()} CPUs; compare ratios")

    best = {k: min(v) for k, v in wall.items()}
    print(f"\n{'':<34} {'best s':>8} {'images/s':>9} {'adv acc':>8}")
    for name in contenders:
        shown = f"{100 * acc[name]:.1f}%" if name in acc else ""
        print(f"{name:<34} {best[name]:>8.2f} {len(x) / best[name]:>9.1f} {shown:>8}")
    print()
    pairs = [("APGD-CE", "ours APGD-CE", "ART APGD-CE"), ("APGD-DLR", "ours APGD-DLR", "ART APGD-DLR")]
    if args.square_queries:
        pairs.append((f"Square-{args.square_queries}", "ours Square", "ART Square"))
    for label, ours, theirs in pairs:
        print(f"{label:<12} throughput {best[theirs] / best[ours]:.2f}x ART's; adversarial accuracy "
              f"{100 * acc[ours]:.1f}% vs ART {100 * acc[theirs]:.1f}% ({100 * (acc[ours] - acc[theirs]):+.1f} points)")
    for label, ours in (("APGD-CE", "ours APGD-CE"), ("APGD-DLR", "ours APGD-DLR")):
        print(f"{label:<12} time / floor: {best[ours] / best['floor (steps x 1 gradient pass)']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
