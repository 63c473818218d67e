"""`robust attack`, `robust attacks` and `robust fool` through click's CliRunner."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from robust.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def lenet_file(trained_lenet, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "lenet.keras"
    trained_lenet.save(path)
    return path


@pytest.fixture(scope="module")
def lenet_dir(trained_lenet, tmp_path_factory):
    """A folder as `robust train` writes it: model.keras and a card naming the dataset."""
    from robust.artifacts import save_trained

    folder = tmp_path_factory.mktemp("runs") / "lenet5"
    save_trained(folder, trained_lenet, {
        "model": "lenet5", "dataset": "mnist", "data_path": None, "input_shape": [28, 28, 1],
        "value_range": [0.0, 1.0], "class_names": [f"digit{i}" for i in range(10)], "num_classes": 10,
    })
    return folder


def test_attack_a_keras_file(lenet_file, tmp_path):
    out = tmp_path / "pgd.json"
    res = invoke("attack", lenet_file, "--dataset", "mnist", "--limit", 200, "--attack", "pgd",
                 "--eps", "0,0.1", "--steps", 5, "--out", out, "--save-examples")
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["eps", "clean", "acc", "adv", "acc", "success", "mean", "Linf", "max", "Linf",
                                "seconds"]
    report = json.loads(out.read_text())
    assert report["n"] == 200 and report["dataset"] == "mnist" and report["attack"] == "pgd"
    assert report["params"]["steps"] == 5 and report["labels_from"] == "given"
    zero, point_one = report["rows"]
    assert zero["eps"] == 0 and zero["adversarial_accuracy"] == zero["clean_accuracy"] > 0.9
    assert point_one["adversarial_accuracy"] < zero["clean_accuracy"] - 0.2
    assert 0.099 < point_one["max_perturbation"] <= 0.1 + 1e-6
    for eps in ("0", "0.1"):
        png = tmp_path / f"pgd-eps{eps}.png"
        assert png.read_bytes().startswith(PNG), png
    assert f"wrote {out}" in res.stdout


def test_attack_a_train_folder_uses_its_card(lenet_dir):
    res = invoke("attack", lenet_dir, "--attack", "fgsm", "--eps", "0.1", "--limit", 100, "--targeted",
                 "--target", "digit3")
    assert res.exit_code == 0, res.output
    report = json.loads((lenet_dir / "attack-fgsm-linf.json").read_text())
    assert report["dataset"] == "mnist" and report["target"] == 3 and report["params"]["targeted"] is True
    assert report["rows"][0]["success_rate"] > 0.05


def test_attacks_lists_attacks_and_parameters():
    res = invoke("attacks")
    assert res.exit_code == 0, res.output
    assert "fgsm" in res.stdout and "pgd" in res.stdout and "fool" in res.stdout
    assert "steps=40" in res.stdout and "restarts=1" in res.stdout and "threshold=0.99" in res.stdout
    assert "from: built-in" in res.stdout


def test_fool_two_classes(lenet_file, tmp_path):
    out = tmp_path / "fool"
    res = invoke("fool", lenet_file, "--classes", "3,7", "--seeds", 2, "--out", out, "--dataset", "mnist")
    assert res.exit_code == 0, res.output
    report = json.loads((out / "fooling.json").read_text())
    assert [i["target"] for i in report["images"]] == [3, 3, 7, 7]
    assert all(i["reached"] and i["confidence"] >= 0.99 and i["predicted"] == i["target"] for i in report["images"])
    assert (out / "fool-3.png").read_bytes().startswith(PNG) and (out / "fool-7.png").is_file()
    assert "reached 99% confidence for 4/4 images" in res.stdout


@pytest.mark.parametrize("args, message", [
    (["--eps", "-0.1"], "eps must be at least 0"),
    (["--eps", "0.1", "--steps", "0"], "steps must be at least 1"),
    (["--norm", "3"], "Unknown norm '3'"),
    (["--attack", "jsma"], "Unknown attack 'jsma'. Known attacks: 'apgd', 'apgd-t', 'auto', 'cw', 'deepfool', 'fgsm', 'fmn', "
                           "'pgd', 'square'"),
    (["--attack", "fgsm", "--steps", "5"], "Attack 'fgsm' has no parameter 'steps'"),
    (["--loss", "hinge"], "Unknown loss 'hinge'"),
    (["--targeted"], "--targeted needs --target"),
    (["--eps", "abc"], "expected comma-separated numbers"),
])
def test_bad_options_exit_2_before_loading(lenet_file, args, message):
    res = invoke("attack", lenet_file, "--dataset", "mnist", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("args, message", [
    (["--eps", "1.5", "--limit", "20"], "eps=1.5 is larger than any L-inf distance"),
    (["--limit", "20"], ".keras file without a model card"),
    (["--dataset", "cifar10", "--limit", "20"], "expects images of shape 28x28x1"),
    (["--dataset", "mnist", "--limit", "20", "--target", "12"], "--target expects a class index from 0 to 9"),
    (["--dataset", "mnist", "--limit", "20", "--target", "seven"], "class index"),
])
def test_bad_input_exits_2(lenet_file, data_dir, args, message):
    extra = [] if "--dataset" in args or "model card" in message else ["--dataset", "mnist"]
    res = invoke("attack", lenet_file, *extra, *args)
    assert res.exit_code == 2, res.output
    assert message in res.output


def test_missing_model_and_bad_fool_options(tmp_path, lenet_file):
    res = invoke("attack", tmp_path / "nope.keras", "--dataset", "mnist")
    assert res.exit_code == 2 and "No model at" in res.output
    res = invoke("fool", lenet_file, "--threshold", "1.2")
    assert res.exit_code == 2 and "threshold must be a confidence below 1" in res.output
    res = invoke("fool", lenet_file, "--classes", "3,11")
    assert res.exit_code == 2 and "--classes expects a class index from 0 to 9" in res.output


def test_attack_a_0_255_model_scales_data_and_eps(trained_lenet, tmp_path):
    """A model taking raw pixels through a Rescaling layer: eps 25.5 of 255 is eps 0.1 of the inner model."""
    import keras
    import numpy as np

    from robust.data import load_dataset
    from robust.evaluation import evaluate_attack

    inputs = keras.Input((28, 28, 1))
    raw = keras.Model(inputs, trained_lenet(keras.layers.Rescaling(1 / 255.0)(inputs)), name="raw_pixels")
    path = tmp_path / "raw.keras"
    raw.save(path)
    out = tmp_path / "a.json"
    res = invoke("attack", path, "--dataset", "mnist", "--attack", "fgsm", "--eps", "0,25.5", "--limit", 100,
                 "--out", out)
    assert res.exit_code == 0, res.output
    assert "Rescaling" in res.output  # the range was inferred, and the tool says how
    rows = json.loads(out.read_text())
    assert rows["value_range"] == [0.0, 255.0]
    data = load_dataset("mnist", limit=100, seed=0)
    ref = evaluate_attack(trained_lenet, "fgsm", data.x_test, data.y_test, [0.0, 0.1], seed=0)
    for got, want in zip(rows["rows"], ref):
        assert got["clean_accuracy"] == want["clean_accuracy"]
        assert abs(got["adversarial_accuracy"] - want["adversarial_accuracy"]) <= 0.02
        if want["max_perturbation"] is None:  # eps 0 flips nothing: no perturbation to measure
            assert got["max_perturbation"] is None
        else:
            assert np.isclose(got["max_perturbation"], 255 * want["max_perturbation"], atol=1e-2)
