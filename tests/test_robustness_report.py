"""Issue 9 in the study and its report: robust accuracy as the headline, the robustness radius, masking checks.

Measurements run on the session's LeNet-5 (conftest.py) and on the same network with its logits
multiplied by 1000 (a saturated softmax, the defensive-distillation failure), with small budgets.
"""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from robust.attacks import AutoAttack
from robust.checks import masking_checks, more_steps, transfer_checks
from robust.cli import main
from robust.evaluation import evaluate_attack, radius_summary, smallest_breaking_eps

SMALL = {"steps": 10, "n_target_classes": 3, "queries": 100}


@pytest.fixture(scope="module")
def images(mnist_test_batch):
    x, y = mnist_test_batch
    return x[:150], y[:150]


@pytest.fixture(scope="module")
def scaled_lenet(trained_lenet):
    """LeNet-5 with logits x 1000: the same decisions, a saturated softmax, zero cross-entropy gradients."""
    inputs = keras.Input((28, 28, 1))
    return keras.Model(inputs, keras.layers.Rescaling(1000.0)(trained_lenet(inputs)), name="scaled")


def test_radius_cdf_from_the_sweep_rows_equals_the_per_image_radii(trained_lenet, images):
    x, y = images
    eps = [0.0, 0.05, 0.1, 0.2]
    results = []
    rows = evaluate_attack(trained_lenet, "pgd", x, y, eps, steps=5, seed=3, on_result=results.append)
    radius = smallest_breaking_eps(results)
    summary = radius_summary(rows)
    for e, share in summary["cdf"]:
        assert share == pytest.approx(np.mean(radius <= e), abs=1e-12)
    assert np.all(radius[results[0].clean_pred != y] == 0)
    broken = np.sort(radius)
    expected_median = broken[(len(broken) - 1) // 2] if np.mean(np.isfinite(radius)) >= 0.5 else None
    # The grid median: the smallest grid eps at which half the images are broken.
    assert summary["median"] == (None if expected_median is None or not np.isfinite(expected_median)
                                 else min(e for e in eps if np.mean(radius <= e) >= 0.5))
    assert summary["beyond"] == pytest.approx(np.mean(np.isinf(radius)))


def test_more_steps_and_square_checks_pass_on_an_honest_model(trained_lenet, images):
    x, y = images
    records = [{**r, "attack_key": "auto"} for r in
               evaluate_attack(trained_lenet, "auto", x, y, [0.0, 0.1], seed=0, **SMALL)]
    raw = {"more_steps": more_steps(trained_lenet, x, y, value_range=(0, 1), seed=0, eps=0.1, n=100)}
    assert raw["more_steps"]["steps"] == [40, 100] and raw["more_steps"]["n"] == 100
    a40, a100 = raw["more_steps"]["accuracy"]
    checks = {c["check"]: c for c in masking_checks(records, raw)}
    square = checks["Square does not beat the white-box attacks"]
    share = records[1]["details"]["broken_by"]["square"] / len(y)
    assert f"{share * 100:.1f}%" in square["detail"]
    assert square["status"] == ("pass" if share <= 0.005 else square["status"])
    steps = checks["PGD-100 finds little more than PGD-40"]
    assert f"{a40 * 100:.1f}%" in steps["detail"] and f"{a100 * 100:.1f}%" in steps["detail"]
    assert steps["status"] == "pass", steps


def test_a_model_without_usable_gradients_fails_the_square_check(scaled_lenet, images):
    x, y = images
    result = AutoAttack(eps=0.1, seed=0, **SMALL)(scaled_lenet, x, y, progress=False)
    record = {"attack": "auto", "attack_key": "auto", "eps": 0.1, "n": len(y), "details": result.details,
              "adversarial_accuracy": result.adversarial_accuracy}
    [check] = masking_checks([record], {})
    if result.details["skipped"]:  # the gradient is exactly zero: only Square ran
        assert check["status"] == "fail" and "skipped" in check["detail"]
    else:  # the gradient parts ran: Square must not have found much more
        assert check["status"] in ("pass", "warn", "fail")
        assert result.details["broken_by"]["square"] / len(y) * 100 == pytest.approx(
            float(check["detail"].split("Square broke ")[1].split("%")[0]), abs=0.05)


def test_transfer_from_the_unscaled_twin_exposes_the_scaled_model(trained_lenet, scaled_lenet, tmp_path, data_dir):
    """The x1000 model's own cross-entropy gradient vanishes; examples made on its unscaled twin still break it."""
    from robust.cells import DataRef, ModelRef, TransferCell, run_cell
    from robust.data import balanced_indices, load_dataset

    trained_lenet.save(tmp_path / "plain.keras")
    scaled_lenet.save(tmp_path / "scaled.keras")
    refs = (("plain", ModelRef(str(tmp_path / "plain.keras"))), ("scaled", ModelRef(str(tmp_path / "scaled.keras"))))
    ds = load_dataset("mnist")
    indices = tuple(int(i) for i in balanced_indices(ds.y_test, 150, 0))
    data = DataRef("mnist", None, None, 0)
    rows = {}
    for source, _ in refs:
        cell = TransferCell(source, refs, data, "pgd", (("steps", 10),), 0.1, indices, 0)
        out = run_cell(cell).transfer
        assert out["n"] == 150 and set(out["accuracy"]) == {"plain", "scaled"}
        rows[source] = out["accuracy"]
    matrix = {"attack": "pgd", "eps": 0.1, "n": 150, "accuracy": rows}
    checks = transfer_checks(matrix, {"plain": "LeNet-5", "scaled": "LeNet-5 x1000"})
    # Same decisions, so the plain model's examples fool both alike; the scaled model's own attack is far weaker.
    assert rows["plain"]["plain"] == pytest.approx(rows["plain"]["scaled"], abs=0.01)
    assert rows["scaled"]["scaled"] > rows["plain"]["scaled"] + 0.05
    assert checks["scaled"][0]["status"] == "fail" and "LeNet-5" in checks["scaled"][0]["detail"]
    assert checks["plain"][0]["status"] == "pass"


READY = """
name = "ready"
title = "Robust accuracy"
seed = 0

[data]
dataset = "mnist"
test_limit = 100

[[models]]
ref = "{plain}"
label = "LeNet-5"

[[models]]
ref = "{scaled}"
label = "LeNet-5 x1000"

[[models]]
ref = "{mlp}"
label = "MLP"

[[attacks]]
name = "fgsm"

[[attacks]]
name = "pgd"
steps = 5

[[attacks]]
name = "auto"
steps = 10
n_target_classes = 3
queries = 100

[eps]
values = [0.0, 0.1, 0.2]

[fooling]
enabled = false

[report]
examples = 2
saliency = 2
example_eps = 0.1
"""


@pytest.mark.slow
def test_study_reports_robust_accuracy_radius_and_masking(trained_lenet, scaled_lenet, mnist, tmp_path):
    from robust.models import build_model

    keras.utils.set_random_seed(0)
    mlp = build_model("mlp", mnist.input_shape, mnist.num_classes, width=64, depth=1)
    mlp.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    small = mnist.limited(3000, seed=0)
    mlp.fit(small.x_train, small.y_train, epochs=1, batch_size=64, verbose=0)
    paths = {}
    for name, model in (("plain", trained_lenet), ("scaled", scaled_lenet), ("mlp", mlp)):
        paths[name] = str(tmp_path / f"{name}.keras")
        model.save(paths[name])
    spec = tmp_path / "ready.toml"
    spec.write_text(READY.format(**paths))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    r = json.loads((out / "results.json").read_text())
    auto = {(x["model"], x["eps"]): x["adversarial_accuracy"] for x in r["records"] if x["attack"] == "auto"}
    assert f"eps=0.1 {100 * auto[('lenet-5', 0.1)]:.1f}%" in result.output  # the headline in the terminal
    assert set(r["transfer"]["accuracy"]) == {"lenet-5", "lenet-5-x1000", "mlp"}
    scaled = {c["check"]: c["status"] for c in r["models"]["lenet-5-x1000"]["checks"]}
    assert scaled["white-box attack at least as strong as transfer from the other models"] == "fail"
    assert "PGD-100 finds little more than PGD-40" in {c["check"] for c in r["models"]["mlp"]["checks"]}
    html, md = (out / "report.html").read_text(), (out / "report.md").read_text()
    for text in (html, md):
        assert "Robust accuracy" in text and "Masking checks" in text and "Transfer matrix" in text
        assert "FLAGGED" in text
        assert f"{100 * auto[('mlp', 0.2)]:.1f}%" in text
    assert (out / "figures" / "radius_cdf.png").is_file()
    assert "| made on \\\\ evaluated on | LeNet-5 | LeNet-5 x1000 | MLP |" in md


def test_robust_attack_writes_each_images_radius(trained_lenet, tmp_path, data_dir):
    path = tmp_path / "lenet.keras"
    trained_lenet.save(path)
    out = tmp_path / "a.json"
    result = CliRunner().invoke(main, ["attack", str(path), "--dataset", "mnist", "--limit", "100", "--attack", "fgsm",
                                       "--eps", "0,0.1,0.2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    radius = np.array([np.inf if r is None else r for r in written["radius"]["per_image"]])
    assert len(radius) == 100 and set(np.unique(radius)) <= {0.0, 0.1, 0.2, np.inf}
    for row in written["rows"]:
        assert 1 - row["adversarial_accuracy"] == pytest.approx(np.mean(radius <= row["eps"]))
    assert "median robustness radius" in result.output
