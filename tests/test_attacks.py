"""The attack engine: properties, agreement with ART, bad input, and the gradient-masking refusal.

Everything runs on the session's LeNet-5 trained on real MNIST (conftest.py).
"""

from __future__ import annotations

import importlib.metadata
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from robust.attacks import FGSM, PGD, Attack, FoolingImages, attack_registry, get_attack
from robust.errors import RobustError
from robust.evaluation import evaluate_attack
from robust.gradients import cache_size, check_gradients, input_gradient, model_logits, saliency_map

@pytest.fixture(scope="module")
def art_classifier(trained_lenet):
    from art.estimators.classification import TensorFlowV2Classifier

    return TensorFlowV2Classifier(
        trained_lenet, nb_classes=10, input_shape=(28, 28, 1), clip_values=(0.0, 1.0),
        loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def predict(model, x):
    return np.argmax(model.predict(x, verbose=0, batch_size=256), axis=1)


# ------------------------------------------------------------------ peer: ART

@pytest.mark.parametrize("norm, eps, targeted", [("inf", 0.1, False), ("2", 1.5, False), ("inf", 0.2, True)])
def test_fgsm_matches_art(trained_lenet, art_classifier, batch, norm, eps, targeted):
    from art.attacks.evasion import FastGradientMethod

    x, y = batch
    target = (y + 1) % 10 if targeted else None
    ours = FGSM(eps=eps, norm=norm, targeted=targeted)(trained_lenet, x, y, target=target)
    art = FastGradientMethod(art_classifier, norm=np.inf if norm == "inf" else 2, eps=eps, targeted=targeted,
                             batch_size=64).generate(x, y=target if targeted else y)
    diff = np.abs(ours.x_adv - art)
    if norm == "inf":
        # The sign of a gradient within float rounding of 0 may differ between two
        # implementations; every other pixel must agree exactly.
        assert np.mean(diff > 1e-6) < 1e-4, f"{np.mean(diff > 1e-6):.2e} of the pixels differ"
    else:
        assert diff.max() < 1e-4
    assert np.array_equal(ours.adv_pred, predict(trained_lenet, ours.x_adv))
    assert ours.success.mean() > 0.2


def test_pgd_at_least_as_strong_as_art(trained_lenet, art_classifier, batch):
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = batch
    eps, steps = 0.1, 20
    step_size = 2.5 * eps / steps
    ours = PGD(eps=eps, steps=steps, step_size=step_size, random_start=True)(trained_lenet, x, y)
    np.random.seed(0)
    art_adv = ProjectedGradientDescent(art_classifier, norm=np.inf, eps=eps, eps_step=step_size, max_iter=steps,
                                       num_random_init=1, batch_size=128, verbose=False).generate(x, y=y)
    art_acc = float(np.mean(predict(trained_lenet, art_adv) == y))
    ours_acc = float(np.mean(predict(trained_lenet, ours.x_adv) == y))
    assert ours_acc == pytest.approx(ours.adversarial_accuracy)
    assert ours_acc < ours.clean_accuracy - 0.2, "PGD should clearly hurt a standard LeNet-5 at eps=0.1"
    assert ours_acc <= art_acc + 0.01, f"ours {ours_acc:.3f} vs ART {art_acc:.3f}"


# ------------------------------------------------------------------ properties

@pytest.mark.parametrize("attack", [FGSM(eps=0.0), PGD(eps=0.0, steps=3), PGD(eps=0.0, norm="2", steps=3)])
def test_eps_zero_returns_x(trained_lenet, batch, attack):
    x, y = batch
    result = attack(trained_lenet, x, y)
    assert np.array_equal(result.x_adv, x)
    assert np.array_equal(result.adv_pred, result.clean_pred)
    assert np.all(result.perturbation == 0)


@pytest.mark.parametrize("attack", [
    FGSM(eps=0.1), FGSM(eps=2.0, norm="2"),
    PGD(eps=0.1, steps=5, restarts=2), PGD(eps=1.5, norm="2", steps=5, loss="margin"),
])
def test_perturbation_inside_ball_and_value_range(trained_lenet, batch, attack):
    x, y = batch
    result = attack(trained_lenet, x, y)
    delta = (result.x_adv - x).reshape(len(x), -1)
    size = np.abs(delta).max(axis=1) if attack.norm.name == "inf" else np.linalg.norm(delta, axis=1)
    assert size.max() <= attack.eps * (1 + 1e-5) + 1e-6
    np.testing.assert_allclose(result.perturbation, size, rtol=1e-4, atol=1e-6)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert result.x_adv.dtype == np.float32 and result.x_adv.shape == x.shape
    assert result.adversarial_accuracy < result.clean_accuracy


def test_accuracy_does_not_rise_with_eps(trained_lenet, batch):
    x, y = batch
    rows = evaluate_attack(trained_lenet, "pgd", x, y, [0.0, 0.03, 0.1, 0.2], steps=10)
    acc = [r["adversarial_accuracy"] for r in rows]
    assert rows[0]["adversarial_accuracy"] == rows[0]["clean_accuracy"]
    assert all(a >= b for a, b in zip(acc, acc[1:])), acc
    assert acc[-1] < 0.2 < rows[0]["clean_accuracy"]
    assert {"eps", "n", "clean_accuracy", "adversarial_accuracy", "success_rate", "mean_perturbation",
            "max_perturbation", "seconds", "norm", "attack", "params"} <= set(rows[0])
    assert rows[1]["max_perturbation"] <= 0.03 + 1e-6 and rows[2]["params"]["steps"] == 10


# With 20 sign steps the margin loss, which follows only the current runner-up class, gets
# fewer images to a distant target than the cross-entropy does.
@pytest.mark.parametrize("loss, reached", [("ce", 0.95), ("margin", 0.85)])
def test_targeted_pgd_reaches_its_target(trained_lenet, batch, loss, reached):
    x, y = batch
    target = (y + 3) % 10
    result = PGD(eps=0.3, steps=20, targeted=True, loss=loss)(trained_lenet, x, y, target=target)
    assert np.array_equal(result.target, target)
    assert result.success.mean() >= reached
    rows = evaluate_attack(trained_lenet, "pgd", x, y, [0.3], steps=20, targeted=True, target=7)
    assert rows[0]["success_rate"] >= 0.95


def test_restarts_keep_the_worst_case(trained_lenet, batch):
    x, y = batch
    one = PGD(eps=0.05, steps=5, restarts=1, seed=3)(trained_lenet, x, y)
    three = PGD(eps=0.05, steps=5, restarts=3, seed=3)(trained_lenet, x, y)
    # Restart 0 is the same run in both; keeping the worst case can only add successes.
    assert np.all(three.success[one.success])
    assert three.success.sum() >= one.success.sum()


def test_labels_default_to_predictions(trained_lenet, batch):
    x, _ = batch
    result = PGD(eps=0.1, steps=3)(trained_lenet, x)
    assert result.labels_from == "model predictions"
    assert np.array_equal(result.labels, predict(trained_lenet, x))
    assert result.clean_accuracy == 1.0
    given = PGD(eps=0.1, steps=3)(trained_lenet, x, batch[1])
    assert given.labels_from == "given" and np.array_equal(given.labels, batch[1])


def test_batching_does_not_change_a_deterministic_attack(trained_lenet, batch):
    x, y = batch
    whole = FGSM(eps=0.1)(trained_lenet, x, y, batch_size=256)
    parts = FGSM(eps=0.1)(trained_lenet, x, y, batch_size=37)
    assert np.array_equal(whole.x_adv, parts.x_adv)
    assert np.array_equal(whole.adv_pred, parts.adv_pred)


def test_compiled_loop_is_built_once_and_reused(trained_lenet, batch):
    x, y = batch
    model = keras.models.clone_model(trained_lenet)
    model.set_weights(trained_lenet.get_weights())
    PGD(eps=0.1, steps=2)(model, x, y, batch_size=64)
    size = cache_size(model)
    for eps, bs in ((0.2, 64), (0.05, 50), (0.1, 200)):
        PGD(eps=eps, steps=2)(model, x, y, batch_size=bs)
    assert cache_size(model) == size
    fn = PGD(eps=0.1, steps=2)._segment_kernel(model, model_logits(model, x), x.shape[1:], 0)
    assert fn.experimental_get_tracing_count() == 1


def test_softmax_output_is_detected_and_removed(trained_lenet, batch):
    x, y = batch
    probs = keras.Model(trained_lenet.inputs, keras.layers.Softmax()(trained_lenet.outputs[0]))
    # The same network with a softmax activation on its last Dense layer, sharing the trained weights.
    config = trained_lenet.get_config()
    config["layers"][-1]["config"]["activation"] = "softmax"
    dense_softmax = keras.Model.from_config(config)
    dense_softmax.set_weights(trained_lenet.get_weights())
    reference = PGD(eps=0.1, steps=5)(trained_lenet, x, y)
    for model in (probs, dense_softmax):
        with pytest.warns(UserWarning, match="softmax"):
            result = PGD(eps=0.1, steps=5)(model, x, y)
        assert result.logits_kind.startswith("logits (the final softmax removed)")
        np.testing.assert_allclose(result.x_adv, reference.x_adv, atol=1e-5)


def test_fooling_images_reach_the_threshold(trained_lenet):
    result = FoolingImages(threshold=0.99, max_steps=300)(trained_lenet, seeds=2)
    assert result.images.shape == (20, 28, 28, 1)
    assert np.array_equal(result.target, np.repeat(np.arange(10), 2))
    probs = tf.nn.softmax(trained_lenet.predict(result.images, verbose=0)).numpy()
    confidence = probs[np.arange(20), result.target]
    assert np.all(confidence >= 0.99) and result.reached.all()
    np.testing.assert_allclose(result.confidence, confidence, atol=1e-5)
    assert np.all(result.steps >= 1) and np.all(result.steps < 300)
    assert result.images.min() >= 0 and result.images.max() <= 1


def test_fooling_with_regularisers_and_a_start_image(trained_lenet, batch):
    start = batch[0][0]
    result = FoolingImages(threshold=0.9, max_steps=200, l2_decay=0.001, blur_every=10, blur_sigma=0.5,
                           jitter=1)(trained_lenet, classes=[3, 7], seeds=1, start=start)
    assert result.reached.all() and np.all(result.predicted == result.target)


def test_input_gradient_matches_a_plain_tape(trained_lenet, batch):
    x, y = batch[0][:32], batch[1][:32]
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(y, trained_lenet(xt)))
    np.testing.assert_allclose(input_gradient(trained_lenet, x, y, batch_size=10), tape.gradient(loss, xt).numpy(),
                               rtol=1e-4, atol=1e-6)
    s = saliency_map(trained_lenet, x)
    assert s.shape == (32, 28, 28) and s.min() >= 0 and np.allclose(s.reshape(32, -1).max(axis=1), 1)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("make, match", [
    (lambda: PGD(eps=-0.1), "eps must be at least 0"),
    (lambda: PGD(eps=float("nan")), "eps must be a finite number"),
    (lambda: PGD(eps=0.1, steps=0), "steps must be at least 1"),
    (lambda: PGD(eps=0.1, restarts=0), "restarts must be at least 1"),
    (lambda: PGD(eps=0.1, restarts=3, random_start=False), "needs random_start=True"),
    (lambda: PGD(eps=0.1, norm="l3"), "Unknown norm 'l3'.*'1', '2', 'inf'"),
    (lambda: PGD(eps=0.1, norm="l1"), "PGD measures perturbations in L-inf and L2; received norm L1"),
    (lambda: PGD(eps=0.1, loss="hinge"), "Unknown loss 'hinge'"),
    (lambda: get_attack("jsma", eps=0.1),
     "Unknown attack 'jsma'. Known attacks: 'apgd', 'apgd-t', 'auto', 'cw', 'deepfool', 'fgsm', 'fmn', 'pgd', 'square'"),
    (lambda: get_attack("fgsm", eps=0.1, steps=3), "has no parameter 'steps'"),
    (lambda: FoolingImages(threshold=1.5), "threshold must be a confidence below 1"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(RobustError, match=match):
        make()


def _bad_images(x):
    nan, inf, big = x.copy(), x.copy(), x * 255
    nan[0, 0, 0, 0] = np.nan
    inf[1, 3, 3, 0] = np.inf
    return nan, inf, big


@pytest.mark.parametrize("case, match", [
    ("nan", "NaN or infinite"), ("inf", "NaN or infinite"), ("range", r"values in \[0, 255\].*value range is \[0, 1\]"),
    ("shape", "expects images of shape 28x28x1"), ("empty", "holds no images"),
    ("labels_shape", r"shape \(50,\).*received shape \(49,\)"), ("labels_range", "outside 0..9"),
    ("labels_float", "integer class labels"),
    ("eps_range", "larger than any L-inf distance"), ("eps_range_l2", "larger than any L2 distance"),
    ("targeted_without_target", "needs a target class"), ("target_untargeted", "untargeted PGD"),
    ("target_range", "target has labels outside"), ("value_range", "low < high"), ("batch", "batch_size"),
])
def test_bad_call_input(trained_lenet, batch, case, match):
    x, y = batch[0][:50], batch[1][:50]
    nan, inf, big = _bad_images(x)
    calls = {
        "nan": lambda: PGD(eps=0.1)(trained_lenet, nan, y),
        "inf": lambda: FGSM(eps=0.1)(trained_lenet, inf, y),
        "range": lambda: PGD(eps=0.1)(trained_lenet, big, y),
        "shape": lambda: PGD(eps=0.1)(trained_lenet, np.zeros((4, 32, 32, 3), np.float32)),
        "empty": lambda: PGD(eps=0.1)(trained_lenet, x[:0]),
        "labels_shape": lambda: PGD(eps=0.1)(trained_lenet, x, y[:49]),
        "labels_range": lambda: PGD(eps=0.1)(trained_lenet, x, y + 5),
        "labels_float": lambda: PGD(eps=0.1)(trained_lenet, x, y + 0.5),
        "eps_range": lambda: PGD(eps=1.5)(trained_lenet, x, y),
        "eps_range_l2": lambda: PGD(eps=40.0, norm="2")(trained_lenet, x, y),
        "targeted_without_target": lambda: PGD(eps=0.1, targeted=True)(trained_lenet, x, y),
        "target_untargeted": lambda: PGD(eps=0.1)(trained_lenet, x, y, target=3),
        "target_range": lambda: PGD(eps=0.1, targeted=True)(trained_lenet, x, y, target=10),
        "value_range": lambda: PGD(eps=0.1)(trained_lenet, x, y, value_range=(1, 0)),
        "batch": lambda: PGD(eps=0.1)(trained_lenet, x, y, batch_size=0),
    }
    with pytest.raises(RobustError, match=match):
        calls[case]()


class _Round(keras.layers.Layer):
    def call(self, x):
        return keras.ops.round(x * 8) / 8


class _ArgmaxOneHot(keras.layers.Layer):
    def call(self, x):
        return keras.ops.one_hot(keras.ops.argmax(x, axis=-1), 10) * 5.0


class _Sign(keras.layers.Layer):
    def call(self, x):
        return keras.ops.sign(x - 0.5)


def _wrap(trained_lenet, layer, where):
    inputs = keras.Input((28, 28, 1))
    h = layer(inputs) if where == "input" else inputs
    out = trained_lenet(h)
    return keras.Model(inputs, layer(out) if where == "output" else out)


@pytest.mark.parametrize("layer, where, match", [
    (_Round, "input", "no gradient with respect to its input"),
    (_ArgmaxOneHot, "output", "no gradient with respect to its input"),
    (_Sign, "input", "input gradient of exactly zero"),
])
def test_gradient_masking_is_refused(trained_lenet, batch, layer, where, match):
    model = _wrap(trained_lenet, layer(), where)
    x, y = batch[0][:20], batch[1][:20]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the one-hot output also looks like probabilities
        for attack in (FGSM(eps=0.1), PGD(eps=0.1, steps=2)):
            with pytest.raises(RobustError, match=f"{match}.*meaningless.*gradient masking"):
                attack(model, x, y)
        with pytest.raises(RobustError, match="gradient masking"):
            check_gradients(model, x, y)
        with pytest.raises(RobustError, match="gradient masking"):
            FoolingImages(max_steps=5)(model, classes=[1])


def test_the_gradient_check_runs_again_when_the_weights_change(batch):
    """The check is remembered per model and weight values: zeroed weights (no input gradient) are refused."""
    x, y = batch[0][:8], batch[1][:8]
    model = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Flatten(), keras.layers.Dense(10)])
    trained = model.get_weights()
    FGSM(eps=0.1)(model, x, y, progress=False)
    model.set_weights([np.zeros_like(w) for w in trained])
    with pytest.raises(RobustError, match="input gradient of exactly zero"):
        FGSM(eps=0.1)(model, x, y, progress=False)
    model.set_weights(trained)
    FGSM(eps=0.1)(model, x, y, progress=False)


# ------------------------------------------------------------------ registry

def test_registry_lists_the_built_ins():
    registry = attack_registry()
    assert registry["fgsm"] is FGSM and registry["pgd"] is PGD
    attack = get_attack("pgd", eps=0.2, steps=7, norm="2")
    assert isinstance(attack, PGD) and attack.params["steps"] == 7 and attack.params["norm"] == "2"
    assert FGSM(eps=0.1).params == {"eps": 0.1, "norm": "inf", "loss": "ce", "targeted": False, "seed": 0}


def test_a_broken_plugin_is_skipped_with_a_warning(monkeypatch):
    import robust.attacks as attacks_module

    real = importlib.metadata.entry_points(group="robust.attacks")
    fake = [importlib.metadata.EntryPoint("broken", "no_such_module_xyz:Attack", "robust.attacks"),
            importlib.metadata.EntryPoint("notanattack", "robust.attacks.norms:LinfNorm", "robust.attacks")]
    monkeypatch.setattr(attacks_module.importlib.metadata, "entry_points", lambda group: [*real, *fake])
    attacks_module._entries.cache_clear()
    try:
        with pytest.warns(UserWarning) as caught:
            registry = attack_registry()
        messages = " ".join(str(w.message) for w in caught)
        assert "'broken'" in messages and "failed to import" in messages
        assert "'notanattack'" in messages and "subclass of robust.attacks.Attack" in messages
        assert set(registry) == {"apgd", "apgd-t", "auto", "cw", "deepfool", "fgsm", "fmn", "pgd", "square"}
        assert issubclass(registry["pgd"], Attack)
        # asking for the broken one by name says why it is unavailable, not "unknown"
        with pytest.raises(RobustError, match="'broken' cannot be used.*no_such_module_xyz"):
            get_attack("broken", eps=0.1)
    finally:
        attacks_module._entries.cache_clear()
