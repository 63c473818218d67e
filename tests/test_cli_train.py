"""`robust train` through click's CliRunner: a real short run, exit codes and messages for bad input."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from robust.cli import main


def invoke(*args):
    return CliRunner().invoke(main, ["train", *args])


def test_train_end_to_end(data_dir, tmp_path):
    out = tmp_path / "run"
    res = invoke("mlp", "--dataset", "mnist", "--limit", "1000", "--epochs", "2", "--batch-size", "16",
                 "--out", str(out), "--option", "width=64", "--mixed-precision")
    assert res.exit_code == 0, res.output
    assert "mnist: 1000 train / 1000 test images of 28x28x1" in res.stderr
    assert "device: " in res.stderr and "strategy: " in res.stderr
    assert "epoch 2/2" in res.stderr  # the progress bar
    assert "clean test accuracy" in res.stdout and f"saved {out}" in res.stdout
    card = json.loads((out / "model.json").read_text())
    assert (out / "model.keras").is_file()
    assert card["options"] == {"width": 64} and card["limit"] == 1000 and card["epochs"] == 2
    assert card["test_accuracy"] > 0.6  # chance is 0.1


def test_train_from_explicit_data_file(data_dir, tmp_path):
    out = tmp_path / "run"
    res = invoke("mlp", "--dataset", "mnist", "--data", str(data_dir / "mnist.npz"), "--limit", "200",
                 "--epochs", "1", "--out", str(out), "--no-progress")
    assert res.exit_code == 0, res.output
    card = json.loads((out / "model.json").read_text())
    assert card["data_path"] == str(data_dir / "mnist.npz")
    assert card["data_source"].startswith("--data ")


@pytest.mark.parametrize("args, message", [
    (["resnet50", "--dataset", "mnist"], "Unknown model 'resnet50'"),
    (["vgg11", "--dataset", "mnist", "--limit", "50"], "'vgg11' cannot take images of shape 28x28x1"),
    (["lenet5"], "needs --dataset"),
    (["lenet5", "--dataset", "imagenet"], "Unknown dataset 'imagenet'"),
    (["lenet5", "--dataset", "mnist", "--data", "/nonexistent/mnist.npz"], "no such file or folder"),
    (["lenet5", "--dataset", "mnist", "--epochs", "0"], "Invalid value for '--epochs'"),
    (["lenet5", "--dataset", "mnist", "--epochs", "ten"], "Invalid value for '--epochs'"),
    (["lenet5", "--dataset", "mnist", "--batch-size", "0"], "Invalid value for '--batch-size'"),
    (["lenet5", "--dataset", "mnist", "--lr", "0"], "Invalid value for '--lr'"),
    (["lenet5", "--dataset", "mnist", "--lr", "-0.1"], "Invalid value for '--lr'"),
    (["lenet5", "--dataset", "mnist", "--limit", "0"], "Invalid value for '--limit'"),
    (["lenet5", "--dataset", "mnist", "--option", "width"], "--option expects KEY=VALUE"),
    (["lenet5", "--dataset", "mnist", "--limit", "50", "--option", "width=2"], "has no option 'width'"),
])
def test_bad_input_exit_code_2(data_dir, args, message):
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_missing_data_file_is_explained(tmp_path):
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip")
    res = invoke("lenet5", "--dataset", "mnist", "--data", str(bad))
    assert res.exit_code == 2
    assert "is not a .npz dataset file" in res.output and str(bad) in res.output


def test_out_is_a_file(data_dir, tmp_path):
    target = tmp_path / "taken"
    target.write_text("")
    res = invoke("mlp", "--dataset", "mnist", "--limit", "50", "--epochs", "1", "--out", str(target))
    assert res.exit_code == 2
    assert "taken" in res.output


def test_a_model_in_out_is_replaced_only_with_force(data_dir, tmp_path):
    out = tmp_path / "m"
    common = ("--dataset", "mnist", "--limit", "100", "--epochs", "1", "--out", str(out), "--no-progress")
    assert invoke("mlp", "--option", "width=8", *common).exit_code == 0
    res = invoke("lenet5", *common)
    assert res.exit_code == 2
    assert "already holds a mlp model trained on mnist (test accuracy" in res.output and "--force" in res.output
    assert json.loads((out / "model.json").read_text())["model"] == "mlp"
    res = invoke("lenet5", *common, "--force")
    assert res.exit_code == 0, res.output
    assert json.loads((out / "model.json").read_text())["model"] == "lenet5"
