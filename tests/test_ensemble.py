"""The worst-case ensemble (--attack auto), sweeps that attack only what still stands, and the CI gate.

Everything runs on the session's LeNet-5 trained on real MNIST (conftest.py), with small budgets.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from robust.attacks import APGD, APGDT, PGD, AutoAttack, Square
from robust.cli import main
from robust.evaluation import evaluate_attack

SMALL = {"steps": 10, "n_target_classes": 3, "queries": 60}


@pytest.fixture(scope="module")
def batch(mnist_test_batch):
    x, y = mnist_test_batch
    return x[:150], y[:150]


def test_the_ensemble_is_the_per_image_worst_case_of_its_parts(trained_lenet, batch):
    x, y = batch
    auto = AutoAttack(eps=0.1, seed=5, **SMALL)
    result = auto(trained_lenet, x, y)
    # Per-image random keys: each part run alone on every image gives, on the images the ensemble
    # left to it, exactly what it gave inside the ensemble. So the ensemble's broken set is their union.
    alone = [part(trained_lenet, x, y) for part in auto.parts()]
    union = np.logical_or.reduce([r.success for r in alone]) | (alone[0].clean_pred != y)
    assert np.array_equal(result.success, union)
    assert result.adversarial_accuracy <= min(r.adversarial_accuracy for r in alone)
    assert [type(p) for p in auto.parts()] == [APGD, APGDT, Square]
    clean_wrong = int(np.sum(result.clean_pred != y))
    assert sum(result.details["broken_by"].values()) + clean_wrong == int(result.success.sum())
    assert result.perturbation.max() <= 0.1 + 1e-6 and 0 <= result.x_adv.min() and result.x_adv.max() <= 1


def test_a_point_broken_earlier_is_never_attacked_again(trained_lenet, batch, monkeypatch):
    x, y = batch
    seen = []
    original = Square.__call__

    def spy(self, model, x_, y_=None, **kw):
        seen.append(kw["mask"].copy())
        return original(self, model, x_, y_, **kw)

    monkeypatch.setattr(Square, "__call__", spy)
    auto = AutoAttack(eps=0.1, seed=5, **SMALL)
    result = auto(trained_lenet, x, y)
    gradient_parts = [p(trained_lenet, x, y) for p in auto.parts()[:2]]
    broken_before = gradient_parts[0].success | gradient_parts[1].success | (gradient_parts[0].clean_pred != y)
    [mask] = seen
    assert not np.any(mask & broken_before) and np.array_equal(mask, ~broken_before)
    assert result.details["skipped"] == []


@pytest.mark.slow
def test_scaled_logits_fool_cross_entropy_pgd_but_not_the_ensemble(trained_lenet, mnist_test_batch):
    x, y = mnist_test_batch[0][:400], mnist_test_batch[1][:400]
    inputs = keras.Input((28, 28, 1))
    scaled = keras.Model(inputs, keras.layers.Rescaling(1000.0)(trained_lenet(inputs)))
    pgd_plain = PGD(eps=0.1, steps=20, seed=1)(trained_lenet, x, y).adversarial_accuracy
    pgd_scaled = PGD(eps=0.1, steps=20, seed=1)(scaled, x, y).adversarial_accuracy
    assert pgd_scaled > pgd_plain + 0.05, "cross-entropy PGD should be fooled by a saturated softmax"
    budget = {"steps": 20, "n_target_classes": 3, "queries": 200}
    auto_plain = AutoAttack(eps=0.1, seed=1, **budget)(trained_lenet, x, y).adversarial_accuracy
    auto_scaled = AutoAttack(eps=0.1, seed=1, **budget)(scaled, x, y).adversarial_accuracy
    assert abs(auto_scaled - auto_plain) <= 0.01 + 1e-9
    assert auto_scaled < pgd_scaled


def test_a_sweep_attacks_only_what_still_stands(trained_lenet, batch):
    x, y = batch
    eps = [0.0, 0.05, 0.1, 0.2]
    swept = evaluate_attack(trained_lenet, "pgd", x, y, eps, steps=5, seed=2)
    accs = [r["adversarial_accuracy"] for r in swept]
    assert accs == sorted(accs, reverse=True)
    for e, row in zip(eps, swept):
        alone = PGD(eps=e, steps=5, seed=2)(trained_lenet, x, y) if e > 0 else None
        if alone is not None:  # each eps keeps what smaller ones broke: never weaker than a lone run
            assert row["adversarial_accuracy"] <= alone.adversarial_accuracy + 1e-12
        assert (row["max_perturbation"] is None) == (e == 0)  # eps 0 flips nothing
        assert e == 0 or row["max_perturbation"] <= e + 1e-6
    # Given in any order, the rows come back in that order and are the same numbers.
    shuffled = evaluate_attack(trained_lenet, "pgd", x, y, [0.2, 0.0, 0.1, 0.05], steps=5, seed=2)
    assert [r["adversarial_accuracy"] for r in shuffled] == [accs[3], accs[0], accs[2], accs[1]]


@pytest.mark.parametrize("threshold, code, word", [("0.95", 1, "FAIL"), ("0.0", 0, "PASS")])
def test_fail_under_is_a_gate(trained_lenet, tmp_path, data_dir, threshold, code, word):
    path = tmp_path / "lenet.keras"
    trained_lenet.save(path)
    result = CliRunner().invoke(main, ["attack", str(path), "--dataset", "mnist", "--limit", "100", "--attack", "fgsm",
                                       "--eps", "0.2", "--out", str(tmp_path / "a.json"), "--no-progress",
                                       "--fail-under", threshold])
    assert result.exit_code == code, result.output
    assert word in result.output and "robust accuracy" in result.output
