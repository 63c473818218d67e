"""PGD's L2 start (never weaker than starting at x) and compaction (no steps on points already broken).

On the session's LeNet-5 trained on real MNIST (conftest.py), with small budgets.
"""

from __future__ import annotations

import numpy as np

from robust.attacks import PGD


def test_l2_random_start_is_never_weaker_than_starting_at_x(trained_lenet, batch):
    x, y = batch
    at_x = PGD(eps=1.5, norm="2", steps=10, random_start=False)(trained_lenet, x, y, progress=False)
    first = PGD(eps=1.5, norm="2", steps=10)(trained_lenet, x, y, progress=False)
    # One run: the first restart starts at x, so it is exactly the plain attack.
    assert np.array_equal(first.success, at_x.success)
    np.testing.assert_allclose(first.x_adv, at_x.x_adv, atol=1e-6)
    three = PGD(eps=1.5, norm="2", steps=10, restarts=3, seed=4)(trained_lenet, x, y, progress=False)
    assert not np.any(at_x.success & ~three.success)  # random restarts only add broken points
    assert three.perturbation.max() <= 1.5 + 1e-4
    # L-inf keeps Madry et al.'s random start in the first run.
    linf = PGD(eps=0.1, steps=10)(trained_lenet, x, y, progress=False)
    linf_x = PGD(eps=0.1, steps=10, random_start=False)(trained_lenet, x, y, progress=False)
    assert not np.allclose(linf.x_adv, linf_x.x_adv)


class _OneLoop(PGD):
    """PGD without compaction: one compiled loop over every step for every point."""

    compact_every = None


def test_compaction_breaks_the_same_points(trained_lenet, batch):
    x, y = batch
    for norm, eps in (("inf", 0.1), ("2", 1.5)):
        params = {"eps": eps, "norm": norm, "steps": 25, "seed": 3}
        compact = PGD(**params)(trained_lenet, x, y, progress=False)
        whole = _OneLoop(**params)(trained_lenet, x, y, progress=False)
        assert np.array_equal(compact.success, whole.success), norm
        assert 0 < compact.success.mean() < 1
        standing = ~compact.success  # they took every step either way: the same best iterate
        np.testing.assert_allclose(compact.x_adv[standing], whole.x_adv[standing], atol=1e-5)
        broken = compact.success
        assert np.all(compact.adv_pred[broken] != y[broken])
        assert compact.perturbation.max() <= eps * (1 + 1e-5) + 1e-6
        assert compact.x_adv.min() >= 0 and compact.x_adv.max() <= 1
        smaller = PGD(**params)(trained_lenet, x, y, progress=False, batch_size=64)
        assert np.array_equal(smaller.success, compact.success)
