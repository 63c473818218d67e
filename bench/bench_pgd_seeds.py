"""Our PGD against ART's over several random seeds at one eps: is either consistently stronger?

One run of each differs by the luck of its random start. The sweep bench
(``bench/bench_sweep.py``) once found ART's PGD-40 0.7 points stronger than
ours at eps 0.1 on 1,000 images; this repeats the comparison over ``--seeds``
seeds of each (ours: the attack's ``seed``; ART: numpy's, which draws its
random start) on the same LeNet-5 and images, and prints each accuracy, the
means and the per-seed spread. Both run PGD-40 with one random start, step
size 2.5 eps / steps, cross-entropy loss.

Prints, never asserts: the accuracy test against ART is
``tests/test_attacks.py::test_pgd_at_least_as_strong_as_art``.

Usage:
    python bench/bench_pgd_seeds.py [--n 1000] [--eps 0.1] [--seeds 5] [--model lenet.keras]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from bench_sweep import _lenet, _timed  # noqa: E402  (the same LeNet-5, data path and timer)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", default=None, help="a .keras LeNet-5 (default: train one for 1 epoch)")
    args = parser.parse_args(argv)

    import keras
    from art.attacks.evasion import ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    from robust.attacks import PGD
    from robust.data import balanced_indices, load_dataset

    data = load_dataset("mnist")
    model = _lenet(data, args.model)
    idx = balanced_indices(data.y_test, args.n, seed=1)
    x, y = data.x_test[idx], data.y_test[idx].astype(np.int64)
    eps, steps, bs = args.eps, args.steps, args.batch_size
    print(f"{len(x)} MNIST test images, LeNet-5, PGD-{steps} L-inf eps {eps}, step {2.5 * eps / steps:.4g}, "
          f"seeds 0-{args.seeds - 1} (load {os.getloadavg()[0]:.1f})", flush=True)
    clf = TensorFlowV2Classifier(model, nb_classes=10, input_shape=x.shape[1:], clip_values=(0.0, 1.0),
                                 loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ours, art = [], []
    for seed in range(args.seeds):
        _, _, result = _timed(lambda: PGD(eps=eps, steps=steps, seed=seed)(model, x, y, batch_size=bs,
                                                                           progress=False))
        ours.append(result.adversarial_accuracy)
        np.random.seed(seed)
        x_adv = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps,
                                         num_random_init=1, batch_size=bs, verbose=False).generate(x, y=y)
        art.append(float(np.mean(np.argmax(clf.predict(x_adv, batch_size=bs), axis=1) == y)))
        print(f"seed {seed}: ours {100 * ours[-1]:.1f}%, ART {100 * art[-1]:.1f}%", flush=True)
    ours_a, art_a = 100 * np.array(ours), 100 * np.array(art)
    print(f"ours {ours_a.mean():.2f}% (range {ours_a.min():.1f}-{ours_a.max():.1f}), ART {art_a.mean():.2f}% "
          f"(range {art_a.min():.1f}-{art_a.max():.1f}); ours minus ART {ours_a.mean() - art_a.mean():+.2f} points "
          f"on average, ours lower in {int(np.sum(ours_a < art_a))} of {len(ours)} seeds, equal in "
          f"{int(np.sum(ours_a == art_a))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
