"""Trust at the edges (issue 20): numbers that must not be silently wrong and results that must not be lost,
on models as people write them (0-255 inputs, sigmoid heads, constant predictions, dead units)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from robust.cli import main


def invoke(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def lenet_dir(trained_lenet, tmp_path_factory):
    from robust.artifacts import save_trained

    folder = tmp_path_factory.mktemp("runs") / "lenet5"
    save_trained(folder, trained_lenet, {"model": "lenet5", "dataset": "mnist", "input_shape": [28, 28, 1],
                                         "value_range": [0.0, 1.0], "num_classes": 10})
    return folder


def _lenet_on_0_255(trained_lenet):
    """The trained LeNet-5 behind a Rescaling(1/255): the same classifier on 0-255 pixels."""
    image = keras.Input((28, 28, 1))
    return keras.Model(image, trained_lenet(keras.layers.Rescaling(1 / 255)(image)))


# -- results that must not be lost ---------------------------------------------------------------------------

def test_a_second_attack_on_the_same_out_is_refused_while_the_first_writes(lenet_dir, tmp_path):
    from robust.artifacts import claim

    out = tmp_path / "same.json"
    args = ("attack", lenet_dir, "--attack", "fgsm", "--eps", "0.1", "--limit", 20, "--out", out, "--no-progress")
    with claim(out, command="robust attack"):  # another process is writing it right now
        res = invoke(*args)
    assert res.exit_code == 2, res.output
    assert "is being written by another robust attack (pid" in res.output and not out.exists()
    assert invoke(*args).exit_code == 0 and out.exists()
    first = out.read_bytes()
    res = invoke(*args)  # the finished result is kept
    assert res.exit_code == 2 and "already exists" in res.output and out.read_bytes() == first
    assert invoke(*args, "--force").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.json"]  # no lock file left behind


def test_an_interrupted_attack_leaves_no_example_pngs(lenet_dir, tmp_path, monkeypatch):
    import robust.cli.attack_cmd as attack_cmd

    def interrupted(results, rows):  # after every eps's PNG was drawn, before the JSON
        raise KeyboardInterrupt

    monkeypatch.setattr(attack_cmd, "_radius", interrupted)
    res = invoke("attack", lenet_dir, "--attack", "fgsm", "--eps", "0.1,0.2", "--limit", 20, "--save-examples",
                 "--out", tmp_path / "r.json", "--no-progress")
    assert res.exit_code == 130, res.output
    assert list(tmp_path.iterdir()) == []


# -- numbers that must not be silently wrong -----------------------------------------------------------------

def test_default_eps_are_fractions_of_the_models_value_range(trained_lenet, tmp_path):
    path = tmp_path / "raw.keras"
    _lenet_on_0_255(trained_lenet).save(path)
    res = invoke("attack", path, "--dataset", "mnist", "--attack", "fgsm", "--limit", 50, "--out",
                 tmp_path / "a.json", "--no-progress")
    assert res.exit_code == 0, res.output
    assert [r["eps"] for r in json.loads((tmp_path / "a.json").read_text())["rows"]] == [12.75, 25.5, 76.5]
    assert "the default 0.05,0.1,0.3 of the model's value range [0, 255]" in res.output
    # The same defaults on the [0, 1] model give the same accuracies: one threat model, two pixel scales.
    same = invoke("attack", tmp_path / "raw.keras", "--dataset", "mnist", "--attack", "fgsm", "--limit", 50,
                  "--eps", "0.3", "--out", tmp_path / "b.json", "--no-progress")
    assert same.exit_code == 0 and "warning: --eps 0.3 is in the model's units" in same.output
    assert "pass --eps 76.5" in same.output


def test_mean_perturbation_does_not_depend_on_the_grid(trained_lenet, batch):
    from robust.evaluation import evaluate_attack

    x, y = batch
    x, y = x[:100], y[:100]
    plain = evaluate_attack(trained_lenet, "pgd", x, y, [0.05, 0.1], steps=5, seed=3)
    with_zero = evaluate_attack(trained_lenet, "pgd", x, y, [0.0, 0.05, 0.1], steps=5, seed=3)[1:]
    for a, b in zip(plain, with_zero):
        assert a["adversarial_accuracy"] == b["adversarial_accuracy"]
        assert a["mean_perturbation"] == pytest.approx(b["mean_perturbation"], rel=1e-6)
        assert a["max_perturbation"] == pytest.approx(b["max_perturbation"], rel=1e-6)
        assert 0 < a["mean_perturbation"] <= a["eps"] + 1e-6
    assert evaluate_attack(trained_lenet, "pgd", x, y, [0.0], steps=5)[0]["mean_perturbation"] is None


def test_a_constant_model_is_called_constant(tmp_path):
    from robust.checks import model_checks

    image = keras.Input((28, 28, 1))
    head = keras.layers.Dense(10, kernel_initializer=keras.initializers.RandomNormal(stddev=1e-3, seed=0),
                              bias_initializer=keras.initializers.Constant([0, 0, 0, 50, 0, 0, 0, 0, 0, 0]))
    keras.Model(image, head(keras.layers.Flatten()(image))).save(tmp_path / "const.keras")
    res = invoke("attack", tmp_path / "const.keras", "--dataset", "mnist", "--attack", "fgsm", "--eps", "0.1",
                 "--limit", 50, "--out", tmp_path / "c.json", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "warning: the model predicts class '3' for 50 of 50 clean images: a constant classifier" in res.output
    [check] = model_checks({"majority": {"class": 3, "share": 1.0, "n": 200}})
    assert check["status"] == "fail" and "constant classifier" in check["detail"]
    [check] = model_checks({"majority": {"class": 3, "share": 0.3, "n": 200}})
    assert check["status"] == "pass"


def test_a_sigmoid_head_is_attacked_through_its_logits(trained_lenet, batch):
    from robust.attacks import get_attack
    from robust.checks import model_checks
    from robust.gradients import model_logits
    from robust.plugins import _probe

    x, y = batch
    x, y = x[:100], y[:100]
    image = keras.Input((28, 28, 1))
    sigmoid = keras.Model(image, keras.layers.Activation("sigmoid")(trained_lenet(image)))
    with pytest.warns(UserWarning, match="ends with a sigmoid"):
        assert model_logits(sigmoid, x).kind == "logits (the final sigmoid removed)"
    assert _probe(sigmoid, (28, 28, 1), (0.0, 1.0), None, "m")[1] == "sigmoid probabilities"
    pgd = get_attack("pgd", eps=0.1, steps=10, seed=0)
    on_sigmoid = pgd(sigmoid, x, y)  # the logits found above are cached with the model
    on_logits = pgd(trained_lenet, x, y)
    assert on_sigmoid.adversarial_accuracy == on_logits.adversarial_accuracy  # the saturated head hides nothing
    assert model_checks({"logits_kind": on_sigmoid.logits_kind})[0]["status"] == "warn"


def test_a_range_that_contradicts_the_rescaling_layer_is_flagged(trained_lenet):
    from robust.cells import range_conflict
    from robust.checks import model_checks

    model = _lenet_on_0_255(trained_lenet)
    conflict = range_conflict(model, (0.0, 1.0))
    assert "takes [0, 255]" in conflict and "off by a factor of 255" in conflict
    assert range_conflict(model, (0.0, 255.0)) is None
    assert model_checks({"value_range_conflict": conflict})[0]["status"] == "warn"


def test_dead_units_and_meaningless_gains_are_named():
    from robust.visualize import gain_label, unit_gains

    start = np.array([0.5, 1e-10, -0.2, -1.0, 0.3])
    value = np.array([6.0, 1.6, 2.0, -1.0, 0.3])
    gains, dead = unit_gains(start, value)
    assert gains[0] == pytest.approx(12.0) and np.isnan(gains[1:]).all()
    assert dead.tolist() == [False, False, False, True, True]
    labels = [gain_label(s, v, g, d) for s, v, g, d in zip(start, value, gains, dead)]
    assert labels == ["x12", "1e-10 -> 1.6", "-0.2 -> 2", "dead", "dead"]


def test_visualize_warns_about_a_dead_unit(tmp_path):
    image = keras.Input((28, 28, 1))
    fc = keras.layers.Dense(3, activation="relu", name="fc")
    model = keras.Model(image, keras.layers.Dense(10)(fc(keras.layers.Flatten()(image))))
    kernel, bias = fc.get_weights()
    kernel[:, 0], bias[0] = 0.0, -1.0  # unit 0 never fires: no input reaches it
    fc.set_weights([kernel, bias])
    model.save(tmp_path / "m.keras")
    res = invoke("visualize", tmp_path / "m.keras", "--layers", "fc", "--top", 0, "--steps", 20,
                 "--out", tmp_path / "v")
    assert res.exit_code == 0, res.output
    assert "warning: fc: 1 of 3 units are dead (units 0)" in res.output
    units = json.loads((tmp_path / "v" / "visualize.json").read_text())["layers"]["fc"]["units"]
    assert [u["dead"] for u in units] == [True, False, False] and units[0]["gain"] is None


# -- models as people write them -----------------------------------------------------------------------------

def test_attack_finds_a_factory_module_in_the_current_folder(trained_lenet, tmp_path, monkeypatch):
    trained_lenet.save(tmp_path / "lenet.keras")
    (tmp_path / "my_models_edge.py").write_text(
        "import keras\n\ndef make():\n    return keras.saving.load_model('lenet.keras'), {'dataset': 'mnist'}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    res = invoke("attack", "my_models_edge:make", "--attack", "fgsm", "--eps", "0.1", "--limit", 20,
                 "--out", tmp_path / "r.json", "--no-progress")
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r.json").read_text())["dataset"] == "mnist"


def test_a_missing_backend_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    res = invoke("models", env={"KERAS_BACKEND": "torch"})
    assert res.exit_code == 2, res.output
    assert "KERAS_BACKEND='torch' asks for Keras's torch backend, but the torch package is not installed" in res.output
    assert "Traceback" not in res.output and "\n\n" not in res.output.strip()


def test_models_trained_lists_the_others_past_a_bad_card(lenet_dir, tmp_path):
    import shutil

    for name in ("a", "b"):
        shutil.copytree(lenet_dir, tmp_path / name)
    (tmp_path / "a" / "model.json").write_text("[]")
    res = invoke("models", "--trained", tmp_path)
    assert res.exit_code == 0, res.output
    assert "skipped: its card cannot be read" in res.output and "lenet5 on mnist" in res.output
    assert "1 of 2 folders have a card robust cannot read" in res.output


def test_train_records_the_model_files_hash(lenet_dir):
    from robust.artifacts import file_sha256

    card = json.loads((lenet_dir / "model.json").read_text())
    assert card["model_sha256"] == file_sha256(lenet_dir / "model.keras")


def test_the_readme_lists_every_timing_field_a_resumed_run_may_change():
    from robust.study import WALL_CLOCK_KEYS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("ends with the same `results.json` as an uninterrupted run"):][:600]
    assert all(f"`{key}`" in section for key in WALL_CLOCK_KEYS), section


def test_the_report_names_dead_units(trained_lenet, batch, tmp_path):
    from robust.report.figures import learned_figures
    from robust.visualize import report_arrays

    x, _ = batch
    image = keras.Input((28, 28, 1))
    fc = keras.layers.Dense(4, activation="relu", name="fc")
    model = keras.Model(image, keras.layers.Dense(10)(fc(keras.layers.Flatten()(image))))
    kernel, bias = fc.get_weights()
    kernel[:, 2], bias[2] = 0.0, -1.0
    fc.set_weights([kernel, bias])
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a dead unit's zero gradient once divided 0 by 0 here
        arrays = report_arrays(model, x[:20], value_range=(0.0, 1.0))
    assert arrays["learned_locality"][2] == 0.0
    np.savez(tmp_path / "a.npz", example_x=x[:2], **arrays)
    with np.load(tmp_path / "a.npz") as arrays:
        [figure] = learned_figures(arrays, "m", tmp_path)
    assert figure["layer"] == "fc" and figure["dead"] == [2]


def test_logits_that_happen_to_lie_in_0_1_are_not_called_sigmoid():
    from robust.gradients import looks_like_sigmoid

    assert not looks_like_sigmoid(np.zeros((4, 10)))                       # no signal: all logits 0
    assert not looks_like_sigmoid(np.full((4, 10), 0.1))                   # a softmax of equal scores
    assert not looks_like_sigmoid(np.array([[0.0, 0.5], [0.2, 0.9]]))      # a logit at exactly 0
    assert looks_like_sigmoid(np.array([[0.01, 0.9, 0.3], [0.2, 0.1, 0.97]]))


def test_no_native_start_up_lines_on_the_console(tmp_path):
    """TensorFlow's C++ start-up lines (absl, oneDNN, cudart, cuInit) bypass TF_CPP_MIN_LOG_LEVEL; the CLI
    holds them back while the backend starts, and lets any other line through (issue 22's first item)."""
    import os
    import subprocess

    from robust.cli.common import _NATIVE_NOISE

    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = subprocess.run([sys.executable, "-m", "robust", "models"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if _NATIVE_NOISE.search(line)], done.stderr
    assert "cnn_wong" in done.stdout
    # A line that is not start-up noise still reaches the console.
    script = ("import os, sys\nfrom robust.cli.common import native_startup_quiet\nwith native_startup_quiet():\n"
              "    os.write(2, b'I0000 cudart_stub.cc:31] Could not find cuda drivers on your machine\\n')\n"
              "    os.write(2, b'E0000 something real went wrong\\n')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stderr.strip() == "E0000 something real went wrong"
