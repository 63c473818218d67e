"""The attack driver: kernels that take the weights, per-image random keys, masks, black-box attacks, cells.

Everything runs on the session's LeNet-5 trained on real MNIST (conftest.py).
"""

from __future__ import annotations

import multiprocessing

import keras
import numpy as np
import pytest
from keras import ops

from robust.attacks import FGSM, PGD, Attack
from robust.errors import RobustError


@pytest.fixture(scope="module")
def batch(mnist_test_batch):
    x, y = mnist_test_batch
    return x[:300], y[:300]


def _copy(model):
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    return clone


def test_a_cached_kernel_follows_new_weights(trained_lenet, batch):
    x, y = batch
    model = _copy(trained_lenet)
    attack = PGD(eps=0.1, steps=5, seed=1)
    before = attack(model, x, y)
    # New weights: the last layer negated, so the model now ranks the classes the other way round.
    last = model.layers[-1]
    last.set_weights([-w for w in last.get_weights()])
    after = attack(model, x, y)
    assert np.array_equal(after.clean_pred, np.argmax(model.predict(x, verbose=0), axis=1))
    assert not np.array_equal(after.clean_pred, before.clean_pred)
    fresh = PGD(eps=0.1, steps=5, seed=1)(_copy(model), x, y)
    np.testing.assert_array_equal(after.x_adv, fresh.x_adv)
    np.testing.assert_array_equal(after.adv_pred, fresh.adv_pred)


@pytest.mark.parametrize("norm, eps", [("inf", 0.1), ("2", 1.5)])
def test_random_starts_do_not_depend_on_the_batch_size(trained_lenet, batch, norm, eps):
    x, y = batch
    attack = PGD(eps=eps, norm=norm, steps=5, restarts=2, seed=4)
    a = attack(trained_lenet, x, y, batch_size=100)
    b = attack(trained_lenet, x, y, batch_size=250)
    if norm == "inf":  # the sign step makes the images bit-identical
        np.testing.assert_array_equal(a.x_adv, b.x_adv)
    else:  # L2 steps scale the gradient; convolutions over other batch shapes round differently (~1e-7).
        # The first L2 restart starts at x, where a confident image's gradient can be tiny: its unit
        # direction amplifies that rounding (measured: one image of 300 moved by 4.6e-4), never the predictions.
        np.testing.assert_allclose(a.x_adv, b.x_adv, atol=1e-3)
    np.testing.assert_array_equal(a.adv_pred, b.adv_pred)


def test_indices_key_the_random_numbers_and_a_mask_attacks_a_subset(trained_lenet, batch):
    x, y = batch
    attack = PGD(eps=0.1, steps=5, seed=2)
    whole = attack(trained_lenet, x, y)
    pick = np.arange(0, 300, 3)
    # A subset attacked on its own, with its global indices, gets exactly its rows of the whole run.
    part = attack(trained_lenet, x[pick], y[pick], indices=pick)
    np.testing.assert_array_equal(part.x_adv, whole.x_adv[pick])
    mask = np.zeros(300, bool)
    mask[pick] = True
    masked = attack(trained_lenet, x, y, mask=mask)
    np.testing.assert_array_equal(masked.x_adv[pick], whole.x_adv[pick])
    np.testing.assert_array_equal(masked.x_adv[~mask], x[~mask])
    assert np.array_equal(masked.attacked, mask)
    assert np.array_equal(masked.clean_pred, whole.clean_pred)
    assert np.array_equal(masked.adv_pred[~mask], masked.clean_pred[~mask])
    with pytest.raises(RobustError, match="mask must be a boolean"):
        attack(trained_lenet, x, y, mask=np.ones(10, bool))


def test_worst_of_takes_any_success_then_the_highest_score(trained_lenet, batch):
    x, y = batch
    weak = FGSM(eps=0.05)(trained_lenet, x, y)
    strong = PGD(eps=0.05, steps=10, seed=0)(trained_lenet, x, y)
    merged = weak.worst_of(strong)
    assert np.array_equal(merged.success, weak.success | strong.success)
    assert merged.adversarial_accuracy <= min(weak.adversarial_accuracy, strong.adversarial_accuracy)
    from_strong = merged.source == 1
    assert np.array_equal(merged.x_adv[from_strong], strong.x_adv[from_strong])
    assert np.all(strong.success[from_strong] | (strong.score[from_strong] > weak.score[from_strong]))
    assert np.array_equal(merged.success, merged.score > 0)


class RandomSearch(Attack):
    """Random search in the L-inf ball: the best of a few random corners, by the model's outputs alone."""

    name = "random-search"
    needs_gradients = False

    def __init__(self, *, eps: float = 0.3, tries: int = 20, seed: int = 0):
        super().__init__(eps=eps, norm="inf", seed=seed)
        self.tries = tries

    def perturb(self, ctx):
        from robust.gradients import margin

        logits, x, goal, rng, eps, low, high = ctx.logits, ctx.x, ctx.goal, ctx.rng, ctx.eps, ctx.low, ctx.high

        def step(i, state):
            best, best_score = state
            corner = ops.clip(x + eps * ops.sign(rng.fold(i).uniform(ops.shape(x), -1.0, 1.0)), low, high)
            score = margin(logits(corner), goal)
            better = score > best_score
            return ops.where(ops.reshape(better, (-1, 1, 1, 1)), corner, best), ops.where(better, score, best_score)

        start = (x, margin(logits(x), goal))
        best, _ = ops.fori_loop(0, self.tries, step, start)
        return best


def test_a_black_box_attack_runs_on_a_model_without_gradients(trained_lenet, batch):
    x, y = batch
    # Rounding the input leaves the model without a usable gradient: gradient attacks are refused.
    inputs = keras.Input((28, 28, 1))
    rounded = keras.layers.Lambda(lambda t: ops.round(t * 4) / 4)(inputs)
    masked = keras.Model(inputs, trained_lenet(rounded))
    with pytest.raises(RobustError, match="gradient"):
        PGD(eps=0.3, steps=5)(masked, x, y)
    result = RandomSearch(eps=0.3, tries=20, seed=1)(masked, x, y)
    assert result.perturbation.max() <= 0.3 + 1e-6
    assert result.x_adv.min() >= 0 and result.x_adv.max() <= 1
    assert result.adversarial_accuracy < result.clean_accuracy - 0.05


def _cell(model_path):
    from robust.cells import AttackCell, DataRef, ModelRef

    return AttackCell(model_key="lenet", model=ModelRef(str(model_path)), data=DataRef("mnist", None, None, 0),
                      attack="pgd", attack_key="pgd", params=(("steps", 5),), eps=(0.0, 0.1),
                      indices=tuple(range(0, 2000, 20)), seed=3)


def test_run_cell_in_a_spawned_process_gives_the_same_rows(trained_lenet, tmp_path, data_dir):
    from robust.cells import run_cell

    path = tmp_path / "lenet.keras"
    trained_lenet.save(path)
    cell = _cell(path)
    here = run_cell(cell).rows
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        there = pool.map(run_cell, [cell])[0].rows
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in here]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in there]
    assert [r["eps"] for r in here] == [0.0, 0.1] and here[1]["adversarial_accuracy"] < here[0]["clean_accuracy"]


class Scaled(Attack):
    """A plugin attack that reads a hyper-parameter of its own inside the kernel, declared nowhere."""

    name = "scaled"

    def __init__(self, *, eps: float = 0.3, scale: float = 1.0, seed: int = 0):
        super().__init__(eps=eps, seed=seed)
        self.scale = scale

    def perturb(self, ctx):
        step = self.scale * ctx.eps * ops.sign(ctx.rng.uniform(ops.shape(ctx.x), -1.0, 1.0))
        return ops.clip(ctx.x + step, ctx.low, ctx.high)


def test_two_settings_of_one_attack_never_share_a_kernel(trained_lenet, batch):
    x, y = batch
    x, y = x[:40], y[:40]
    full = Scaled(eps=0.2, scale=1.0)(trained_lenet, x, y)
    none = Scaled(eps=0.2, scale=0.0)(trained_lenet, x, y)  # before issue 21 this ran scale=1.0's kernel
    assert full.perturbation.max() == pytest.approx(0.2, abs=1e-6) and none.perturbation.max() == 0.0
    # The same holds for built-ins, and for two classes of one name (a class made in a function).
    from robust.gradients import _CACHE

    ce, margin = FGSM(eps=0.1, loss="ce"), FGSM(eps=0.2, loss="margin")
    ce(trained_lenet, x, y), margin(trained_lenet, x, y)
    keys = {k[1] for k in _CACHE[trained_lenet] if k[0] == "attack"}
    assert ce.config() != margin.config() and {ce.config(), margin.config()} <= keys
    assert FGSM(eps=0.3, loss="ce").config() == ce.config()  # eps is the kernel's argument: one kernel per loss

    def shrunk(fraction):
        class Shrunk(Scaled):
            def perturb(self, ctx):
                return super().perturb(ctx._replace(eps=ctx.eps * fraction))
        return Shrunk

    half, quarter = shrunk(0.5)(eps=0.2)(trained_lenet, x, y), shrunk(0.25)(eps=0.2)(trained_lenet, x, y)
    assert half.perturbation.max() == pytest.approx(0.1, abs=1e-6)
    assert quarter.perturbation.max() == pytest.approx(0.05, abs=1e-6)
    # Settings a kernel takes as arguments share one: PGD-20 and PGD-40's segment kernel (the sweep's eps too).
    before = set(_CACHE[trained_lenet])
    for steps, eps in ((20, 0.1), (40, 0.1), (40, 0.2)):
        PGD(eps=eps, steps=steps, seed=1)(trained_lenet, x, y)
    assert len([k for k in set(_CACHE[trained_lenet]) - before if k[0] == "steps"]) <= 1
