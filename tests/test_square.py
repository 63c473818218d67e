"""The Square attack (Andriushchenko et al. 2020): schedule, patterns, feasibility, no gradients, ART as a peer.

The attacks run on the session's LeNet-5 trained on real MNIST (conftest.py).
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from robust import backend
from robust.attacks import PGD, Square, get_attack
from robust.attacks.square import eta, square_fraction, window_size
from robust.errors import RobustError

def predict(model, x):
    return np.argmax(model.predict(x, verbose=0, batch_size=256), axis=1)


# ------------------------------------------------------------ pure helpers

def test_p_schedule_halves_at_the_reference_points():
    # For 10,000 queries the reference halves p after iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000.
    p = [square_fraction(i, 10000) for i in range(10000)]
    changes = [i for i in range(1, 10000) if p[i] != p[i - 1]]
    assert changes == [11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001]
    assert p[0] == 0.8 and p[-1] == pytest.approx(0.8 / 512)
    # Rescaled to the budget: for 1,000 queries the same fractions of it.
    p = [square_fraction(i, 1000, p_init=0.5) for i in range(1000)]
    assert [i for i in range(1, 1000) if p[i] != p[i - 1]] == [2, 6, 21, 51, 101, 201, 401, 601, 801]
    assert p[0] == 0.5


def test_window_size():
    assert window_size(0.8, 28, 28) == 25              # round(sqrt(0.8 * 784)) = round(25.04)
    assert window_size(0.8 / 512, 28, 28) == 1         # at least one pixel
    assert window_size(0.8 / 512, 28, 28, smallest=3, odd=True) == 3
    assert window_size(0.05, 28, 28, smallest=3, odd=True) == 7   # round(6.26) = 6, made odd
    assert window_size(1.0, 10, 40) == 10              # never larger than the image


@pytest.mark.parametrize("side", [3, 5, 8, 25])
def test_eta_pattern(side):
    pattern = eta(side)
    assert pattern.shape == (side, side)
    assert np.sum(pattern ** 2) == pytest.approx(1.0)
    top, bottom = pattern[: side // 2], pattern[side // 2:]
    assert np.all(top > 0) and np.all(bottom < 0)
    # Nested rectangles: the largest weight at the centre of each half, decreasing outwards.
    centre = bottom[(side - side // 2) // 2]
    assert np.argmin(centre) == side // 2
    assert np.all(np.diff(np.abs(centre[: side // 2 + 1])) >= 0)


# --------------------------------------------------------------- properties

@pytest.mark.parametrize("norm, eps", [("inf", 0.1), ("2", 1.5)])
def test_perturbation_inside_ball_and_value_range(trained_lenet, batch, norm, eps):
    x, y = batch
    x, y = x[:100], y[:100]
    result = Square(eps=eps, norm=norm, queries=100)(trained_lenet, x, y)
    delta = (result.x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(axis=1) if norm == "inf" else np.sqrt((delta ** 2).sum(axis=1))
    assert size.max() <= eps * (1 + 1e-5)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert np.array_equal(result.adv_pred, predict(trained_lenet, result.x_adv))
    assert result.adversarial_accuracy < result.clean_accuracy - 0.1
    wrong = result.clean_pred != y  # images the model already gets wrong are returned unchanged
    assert np.array_equal(result.x_adv[wrong], x[wrong])


def _start(norm, eps, x):
    moves = Square(eps=eps, norm=norm)._moves(x.shape[1:])
    rng = backend.Rng(backend.image_keys(0, range(len(x))))
    return backend.to_numpy(moves.start(backend.tensor(x), eps, rng, 0.0, 1.0))


def test_linf_start_is_vertical_stripes():
    x = np.full((6, 28, 28, 3), 0.5, np.float32)
    delta = _start("inf", 0.1, x) - x
    assert np.allclose(np.abs(delta), 0.1, atol=1e-6)
    assert np.all(delta == delta[:, :1])             # constant down each column
    assert len(np.unique(np.sign(delta[:, 0]).reshape(-1))) == 2


def test_l2_start_is_a_grid_of_patterns_of_size_eps():
    x = np.full((6, 28, 28, 1), 0.5, np.float32)
    delta = (_start("2", 0.5, x) - x)[..., 0]
    np.testing.assert_allclose(np.sqrt((delta ** 2).sum(axis=(1, 2))), 0.5, rtol=1e-5)
    # 28 // 5 = 5: a 5 x 5 grid of 5 x 5 windows from pixel 1; row and column 0, 26 and 27 stay untouched.
    assert np.all(delta[:, [0, 26, 27], :] == 0) and np.all(delta[:, :, [0, 26, 27]] == 0)
    window = delta[0, 1:6, 6:11]
    pattern = eta(5) * 0.5 / 5  # 25 windows of equal size share eps
    assert any(np.allclose(window, s * p, atol=1e-6) for s in (1, -1) for p in (pattern, pattern.T))


def test_batches_and_seed(trained_lenet, batch):
    x, y = batch[0][:40], batch[1][:40]
    first = Square(eps=0.1, queries=30, seed=1)(trained_lenet, x, y)
    again = Square(eps=0.1, queries=30, seed=1)(trained_lenet, x, y)
    other = Square(eps=0.1, queries=30, seed=2)(trained_lenet, x, y)
    assert np.array_equal(first.x_adv, again.x_adv) and not np.array_equal(first.x_adv, other.x_adv)


def test_targeted_square_moves_towards_its_target(trained_lenet, batch):
    x, y = batch[0][:50], batch[1][:50]
    target = (y + 1) % 10
    result = Square(eps=0.3, queries=200, targeted=True)(trained_lenet, x, y, target=target)
    assert np.mean(result.adv_pred == target) > 0.5


class _Round(keras.layers.Layer):
    """Quantises the input to 8 levels: the gradient through it is None (no registered gradient)."""

    def call(self, x):
        return keras.ops.round(x * 8) / 8


def test_square_never_asks_for_a_gradient(trained_lenet, batch):
    inputs = keras.Input((28, 28, 1))
    model = keras.Model(inputs, trained_lenet(_Round()(inputs)))
    x, y = batch[0][:100], batch[1][:100]
    with pytest.raises(RobustError, match="no gradient with respect to its input"):
        PGD(eps=0.1, steps=2)(model, x, y)  # the gradient attacks refuse this model
    result = Square(eps=0.15, queries=100)(model, x, y)
    assert result.adversarial_accuracy < result.clean_accuracy - 0.2
    assert np.array_equal(result.adv_pred, predict(model, result.x_adv))


def test_bad_parameters_and_shapes(batch):
    with pytest.raises(RobustError, match="p_init .* in \\(0, 1\\]; received 2"):
        Square(eps=0.1, p_init=2)
    with pytest.raises(RobustError, match="queries must be at least 1"):
        Square(eps=0.1, queries=0)
    inputs = keras.Input((784,))
    flat = keras.Model(inputs, keras.layers.Dense(10)(inputs))
    with pytest.raises(RobustError, match="shaped \\(height, width, channels\\).*received images of shape \\(784,\\)"):
        Square(eps=0.1, queries=2)(flat, batch[0][:4].reshape(4, 784), batch[1][:4])
    tiny_in = keras.Input((4, 4, 1))
    tiny = keras.Model(tiny_in, keras.layers.Dense(10)(keras.layers.Flatten()(tiny_in)))
    with pytest.raises(RobustError, match="at least 5 x 5 pixels for the L2 norm"):
        Square(eps=0.5, norm="2", queries=2)(tiny, np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, int))
    assert isinstance(get_attack("square", eps=0.1), Square) and Square.needs_gradients is False


# ------------------------------------------------------------------ peer: ART

@pytest.mark.slow
@pytest.mark.parametrize("norm, eps", [("inf", 0.1), ("2", 1.5)])
def test_as_strong_as_art(trained_lenet, mnist_test_batch, norm, eps):
    """At most 2 points above ART's SquareAttack at the same 300 iterations, on 300 images.

    Over seeds 0-2 on 200 images (L-inf) ours and ART's differed by -1.5 to +2.0 points, equal on
    average; ART's L2 variant is much weaker than the reference's, which ours follows.
    """
    from art.attacks.evasion import SquareAttack
    from art.estimators.classification import TensorFlowV2Classifier

    x, y = mnist_test_batch[0][:300], mnist_test_batch[1][:300]
    ours = Square(eps=eps, norm=norm, queries=300)(trained_lenet, x, y)
    classifier = TensorFlowV2Classifier(trained_lenet, nb_classes=10, input_shape=(28, 28, 1), clip_values=(0.0, 1.0),
                                        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ART's L2 update divides by zero on finished images
        art_adv = SquareAttack(classifier, norm=np.inf if norm == "inf" else 2, eps=eps, max_iter=300,
                               nb_restarts=1, batch_size=128, verbose=False).generate(x, y=y)
    art = float(np.mean(predict(trained_lenet, art_adv) == y))
    assert ours.adversarial_accuracy <= art + 0.02, f"ours {ours.adversarial_accuracy:.3f} vs ART {art:.3f}"
