"""``robust eval``: the installed example plugin, each kind of reference, models as people ship them.

Each evaluation's numbers are compared with :func:`robust.evaluation.evaluate_attack`
on the same model, the same images (scaled to the model's range) and the same seed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import layers

from robust.cli import main
from robust.data import balanced_indices

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "robust-example-plugin"
LIMIT = 60  # test images attacked per evaluation


def _clear_registries():
    from robust.attacks import _entries as attack_entries
    from robust.models.registry import entries

    entries.cache_clear()
    attack_entries.cache_clear()


def run_eval(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["eval", *args])
    assert "Traceback" not in result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def evaluate(ref: str, out: Path, *extra: str, dataset: str = "mnist", eps: str = "0,0.1",
             attacks: str = "fgsm") -> dict:
    code, output = run_eval(ref, "--dataset", dataset, "--limit", str(LIMIT), "--attacks", attacks, "--eps", eps,
                            "--no-fooling", "--no-progress", "--out", str(out), *extra)
    assert code == 0, output
    results = json.loads((out / "results.json").read_text())
    results["_output"] = output
    return results


def assert_matches_evaluate_attack(results: dict, model, x: np.ndarray, y: np.ndarray, value_range,
                                   indices: np.ndarray) -> None:
    """Every record of the evaluation equals evaluate_attack's on the same model, images, indices and seed."""
    from robust.evaluation import evaluate_attack

    [key] = results["models"]
    for attack in {r["attack"] for r in results["records"]}:
        records = sorted((r for r in results["records"] if r["attack"] == attack), key=lambda r: r["eps"])
        expected = evaluate_attack(model, attack, x, y, [r["eps"] for r in records], value_range=value_range,
                                   seed=results["run"]["seed"], indices=indices)
        for rec, exp in zip(records, expected):
            assert rec["model"] == key and rec["n"] == len(y) == exp["n"]
            for field in ("clean_accuracy", "adversarial_accuracy", "success_rate"):
                assert rec[field] == pytest.approx(exp[field], abs=1e-9), (attack, rec["eps"], field)
            if exp["mean_perturbation"] is None:  # nothing flipped (eps 0): no perturbation to measure
                assert rec["mean_perturbation"] is None and rec["max_perturbation"] is None
                continue
            assert rec["mean_perturbation"] == pytest.approx(exp["mean_perturbation"], rel=1e-5, abs=1e-6)
            assert rec["max_perturbation"] <= rec["eps"] * (1 + 1e-5) + 1e-6


def attacked(dataset, seed: int = 0):
    """The test images a study with --limit LIMIT attacks, in [0, 1], their labels and test-split indices."""
    idx = balanced_indices(dataset.y_test, LIMIT, seed)
    return dataset.x_test[idx], dataset.y_test[idx], idx


# ---------------------------------------------------------------- models as people ship them

class SmallSubclassed(keras.Model):
    """A subclassed model: no keras.Input, so its input shape comes with the metadata."""

    def __init__(self):
        super().__init__(name="small_subclassed")
        self.conv = layers.Conv2D(8, 3, activation="relu")
        self.pool = layers.MaxPooling2D(2)
        self.flat = layers.Flatten()
        self.head = layers.Dense(10)

    def call(self, x, training=False):
        return self.head(self.flat(self.pool(self.conv(x))))


def _conv_trunk(x):
    x = layers.Conv2D(8, 3, activation="relu")(x)
    return layers.Flatten()(layers.MaxPooling2D(2)(x))


def functional_255():
    x = keras.Input((28, 28, 1))
    h = _conv_trunk(layers.Rescaling(1 / 255)(x))
    return keras.Model(x, layers.Dense(10)(h), name="functional_255")


def normalization_255():
    # MNIST pixel statistics in 0-255 units: the layer standardises, it does not say the range.
    x = keras.Input((28, 28, 1))
    h = _conv_trunk(layers.Normalization(mean=33.3, variance=78.6 ** 2)(x))
    return keras.Model(x, layers.Dense(10)(h), name="normalization_255")


def softmax_last():
    x = keras.Input((28, 28, 1))
    return keras.Model(x, layers.Dense(10, activation="softmax")(_conv_trunk(x)), name="softmax_last")


def bn_dropout():
    x = keras.Input((28, 28, 1))
    h = layers.Conv2D(8, 3, use_bias=False)(x)
    h = layers.Activation("relu")(layers.BatchNormalization()(h))
    h = layers.Dropout(0.5)(layers.Flatten()(layers.MaxPooling2D(2)(h)))
    return keras.Model(x, layers.Dense(10)(h), name="bn_dropout")


HOSTILE = "<script>alert(1)</script>"
SHAPES = {  # name -> (builder, pixel scale it is trained on, loss on probabilities, metadata)
    "functional_255": (functional_255, 255.0, False, {}),
    "normalization_255": (normalization_255, 255.0, False, {}),
    "softmax_last": (softmax_last, 1.0, True, {}),
    # ... whose plugin also names itself and its classes with HTML (see test_plugin_names_are_escaped)
    "subclassed": (SmallSubclassed, 1.0, False, {"input_shape": (28, 28, 1), "name": HOSTILE,
                                                  "class_names": [HOSTILE] + [f"c{i}" for i in range(1, 10)]}),
    "bn_dropout": (bn_dropout, 1.0, False, {}),
}


@pytest.fixture(scope="module")
def shipped(mnist):
    """A module ``shipped_models`` of factories returning models trained 300 steps on real MNIST, once each."""
    module = types.ModuleType("shipped_models")
    cache: dict[str, tuple] = {}

    def factory(name):
        def make():
            if name not in cache:
                build, scale, probabilities, metadata = SHAPES[name]
                keras.utils.set_random_seed(0)
                model = build()
                model.compile(optimizer=keras.optimizers.Adam(3e-3),
                              loss=keras.losses.SparseCategoricalCrossentropy(from_logits=not probabilities))
                n = 300 * 32
                model.fit(mnist.x_train[:n] * np.float32(scale), mnist.y_train[:n], batch_size=32, epochs=1,
                          verbose=0)
                cache[name] = (model, metadata)
            return cache[name]
        return make

    for name in SHAPES:
        setattr(module, name, factory(name))
    sys.modules["shipped_models"] = module
    yield module
    del sys.modules["shipped_models"]


RUNS = {  # name -> (extra options, the value range expected, where it comes from)
    "functional_255": ((), (0.0, 255.0), "Rescaling layer"),
    "normalization_255": (("--value-range", "0,255"), (0.0, 255.0), "--value-range"),
    "softmax_last": ((), (0.0, 1.0), "assumed [0, 1]"),
    "subclassed": ((), (0.0, 1.0), "assumed [0, 1]"),
    "bn_dropout": ((), (0.0, 1.0), "assumed [0, 1]"),
}


@pytest.fixture(scope="module")
def shipped_eval(shipped, tmp_path_factory):
    """``robust eval`` of each shipped model, run once when first asked for: name -> (results, run folder)."""
    done: dict[str, tuple[dict, Path]] = {}

    def get(name):
        if name not in done:
            extra, (lo, hi), _ = RUNS[name]
            out = tmp_path_factory.mktemp("eval") / name
            eps = f"0,{0.1 * (hi - lo):g}"  # eps in the model's own range: 25.5 of 255 is 0.1 of 1
            done[name] = evaluate(f"shipped_models:{name}", out, *extra, eps=eps), out
        return done[name]

    return get


@pytest.mark.parametrize("name", list(RUNS))
def test_models_as_people_ship_them(shipped_eval, mnist, name):
    extra, value_range, source = RUNS[name]
    lo, hi = value_range
    results, out = shipped_eval(name)
    [model_info] = results["models"].values()
    assert model_info["value_range"] == [lo, hi] and source in model_info["value_range_source"]
    assert f"inputs in [{lo:g}, {hi:g}] ({model_info['value_range_source']})" in results["_output"]

    from robust.plugins import load_model_ref

    loaded = load_model_ref(f"shipped_models:{name}", value_range=value_range if "--value-range" in extra else None)
    x, y, idx = attacked(mnist)
    assert_matches_evaluate_attack(results, loaded.model, lo + x * (hi - lo), y, value_range, idx)

    clean, adv = sorted(results["records"], key=lambda r: r["eps"])  # one attack, eps 0 and 10% of the range
    assert clean["clean_accuracy"] > 0.8  # 300 steps on real MNIST
    assert clean["adversarial_accuracy"] == clean["clean_accuracy"]
    assert adv["adversarial_accuracy"] < adv["clean_accuracy"]
    # inference mode: the clean accuracy is the model's deterministic prediction (no dropout, BN statistics)
    pred = np.argmax(np.asarray(loaded.model.predict(lo + x * (hi - lo), verbose=0)), axis=1)
    assert clean["clean_accuracy"] == pytest.approx(float(np.mean(pred == y)), abs=1e-9)
    html = (out / "report.html").read_text()
    assert f"inputs in [{lo:.1f}, {hi:.1f}]" in html


def test_numbers_agree_with_robust_attack(shipped_eval, shipped, tmp_path):
    """`robust attack` on the same model saved as a .keras file gives the numbers of `robust eval`."""
    results, _ = shipped_eval("bn_dropout")
    model, _ = shipped.bn_dropout()
    model.save(tmp_path / "bn.keras")
    out = tmp_path / "attack.json"
    res = CliRunner().invoke(main, ["attack", str(tmp_path / "bn.keras"), "--dataset", "mnist", "--attack", "fgsm",
                                    "--eps", "0.1", "--limit", str(LIMIT), "--seed", "0", "--out", str(out),
                                    "--no-progress"])
    assert res.exit_code == 0, res.output
    [row] = json.loads(out.read_text())["rows"]
    [rec] = [r for r in results["records"] if r["eps"] == row["eps"]]
    for field in ("n", "clean_accuracy", "adversarial_accuracy", "success_rate"):
        assert row[field] == pytest.approx(rec[field], abs=1e-9), field


@pytest.mark.slow
def test_file_and_train_folder_refs_give_the_factory_numbers(shipped_eval, shipped, tmp_path):
    """The same weights as a .keras file and as a `robust train` folder: the same records as module:factory."""
    from robust.artifacts import save_trained

    by_factory, _ = shipped_eval("functional_255")
    model, _ = shipped.functional_255()
    model.save(tmp_path / "cnn.keras")
    save_trained(tmp_path / "trained", model, {"model": "cnn", "dataset": "mnist", "value_range": [0.0, 255.0],
                                               "class_names": [str(i) for i in range(10)]})
    from_file = evaluate(str(tmp_path / "cnn.keras"), tmp_path / "file", eps="0,25.5")
    # the folder's card names the dataset and the range: no --dataset needed
    code, output = run_eval(str(tmp_path / "trained"), "--limit", str(LIMIT), "--attacks", "fgsm", "--eps", "0,25.5",
                            "--no-fooling", "--no-progress", "--out", str(tmp_path / "folder"))
    assert code == 0, output
    from_folder = json.loads((tmp_path / "folder" / "results.json").read_text())
    [file_info], [folder_info] = from_file["models"].values(), from_folder["models"].values()
    assert "Rescaling layer" in file_info["value_range_source"] and folder_info["value_range_source"] == "model card"
    assert file_info["ref"] == str(tmp_path / "cnn.keras") and folder_info["ref"] == str(tmp_path / "trained")
    numbers = lambda r: [(x["eps"], x["clean_accuracy"], x["adversarial_accuracy"], x["success_rate"])  # noqa: E731
                         for x in sorted(r["records"], key=lambda x: x["eps"])]
    assert numbers(from_file) == numbers(by_factory) == numbers(from_folder)


@pytest.mark.slow
def test_keras_applications_architecture(tmp_path, cifar_dir, monkeypatch):
    """MobileNetV3Small built with weights=None at 32x32: Rescaling(1/127.5, offset -1) inside, batch
    normalization and dropout, softmax last (minimalistic, to keep compiling it short)."""
    from robust.data import load_dataset

    with np.load(cifar_dir / "cifar10.npz", allow_pickle=False) as cifar:  # real CIFAR-10, cut small
        y_test = cifar["y_test"].reshape(-1)
        idx = balanced_indices(y_test, 200, 0)
        small = tmp_path / "cifar_small.npz"
        np.savez(small, x_train=cifar["x_train"][:100], y_train=cifar["y_train"][:100],
                 x_test=cifar["x_test"][idx], y_test=y_test[idx])

    keras.utils.set_random_seed(0)
    app = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), weights=None, classes=10, minimalistic=True)
    module = types.ModuleType("apps")
    module.mobilenet = lambda: app
    monkeypatch.setitem(sys.modules, "apps", module)
    results = evaluate("apps:mobilenet", tmp_path / "app", "--data", str(small), dataset="cifar10", eps="0,8")
    [info] = results["models"].values()
    assert info["value_range"] == [0.0, 255.0] and "scale 1/127.5, offset -1" in info["value_range_source"]
    assert info["kind"] == "conv"
    data = load_dataset("cifar10", small)
    x, y, idx = attacked(data)
    assert_matches_evaluate_attack(results, app, x * 255.0, y, (0.0, 255.0), idx)


# ---------------------------------------------------------------- the example plugin, really installed

@pytest.fixture(scope="session")
def example_site(tmp_path_factory):
    """The example package installed with pip (offline, no build isolation) into a temporary folder."""
    root = tmp_path_factory.mktemp("example")
    src, site = root / "src", root / "site"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True)
    assert (site / "robust_example_plugin").is_dir()
    return site


@pytest.fixture
def example_installed(example_site):
    sys.path.insert(0, str(example_site))
    _clear_registries()
    yield example_site
    sys.path.remove(str(example_site))
    _clear_registries()


def test_installed_example_plugin_next_to_a_broken_one(example_site, tmp_path):
    """A separate process sees the installed example and a plugin that fails to import, and keeps working."""
    broken = tmp_path / "broken"
    info = broken / "broken_plugin-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[robust.models]\nbroken = broken_plugin:model\n"
                                           "[robust.attacks]\nbroken_attack = broken_plugin:Attack\n")
    (broken / "broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(example_site), str(broken)])}
    code = textwrap.dedent("""
        from click.testing import CliRunner
        from robust.cli import main
        from robust.attacks import attack_registry, attack_source
        print(CliRunner().invoke(main, ["models"]).output)
        print(CliRunner().invoke(main, ["attacks"]).output)
        print("ATTACKS", sorted(attack_registry()), attack_source("random_noise"))
    """)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "digits_cnn_255" in out and "from: plugin robust-example-plugin (robust_example_plugin.models:" in out
    assert "lenet5" in out and "from: built-in" in out
    assert "Skipped plugins" in out and "needs libfoo" in out
    assert ("ATTACKS ['apgd', 'apgd-t', 'auto', 'cw', 'deepfool', 'fgsm', 'fmn', 'pgd', 'random_noise', 'square'] "
            "plugin robust-example-plugin") in out
    assert "random_noise" in out and "from: plugin robust-example-plugin" in out  # `robust attacks`
    # the broken attack plugin is a warning naming it, not a failure
    assert "attack plugin 'broken_attack'" in out + proc.stderr


@pytest.mark.slow
def test_eval_the_installed_example_plugin(example_installed, mnist, tmp_path):
    from robust.attacks import attack_source
    from robust.plugins import load_model_ref

    assert attack_source("random_noise").startswith("plugin robust-example-plugin")
    out = tmp_path / "example"
    code, output = run_eval("digits_cnn_255", "--limit", str(LIMIT), "--attacks", "fgsm,random_noise",
                            "--eps", "0,32", "--no-fooling", "--no-progress", "--out", str(out))
    assert code == 0, output
    results = json.loads((out / "results.json").read_text())
    [info] = results["models"].values()
    assert results["run"]["data"]["dataset"] == "mnist"  # from the plugin's metadata
    assert info["value_range"] == [0.0, 255.0] and info["value_range_source"] == "plugin metadata"
    assert "from plugin robust-example-plugin" in output
    loaded = load_model_ref("digits_cnn_255")  # the factory caches its model: the one evaluated
    x, y, idx = attacked(mnist)
    assert_matches_evaluate_attack(results, loaded.model, x * 255.0, y, (0.0, 255.0), idx)
    by = {(r["attack"], r["eps"]): r for r in results["records"]}
    assert by["fgsm", 0.0]["clean_accuracy"] > 0.85
    assert by["fgsm", 32.0]["adversarial_accuracy"] < by["fgsm", 32.0]["clean_accuracy"]
    # the gradient attack beats the gradient-free baseline at the same eps
    assert by["random_noise", 32.0]["adversarial_accuracy"] >= by["fgsm", 32.0]["adversarial_accuracy"]
    html = (out / "report.html").read_text()
    assert "Its classes: zero, one, two" in html and "(plugin metadata)" in html


# ---------------------------------------------------------------- reports escape what plugins say

def test_plugin_names_and_class_names_are_escaped(shipped_eval):
    results, out = shipped_eval("subclassed")  # its metadata names it and its first class HOSTILE
    [info] = results["models"].values()
    assert info["label"] == HOSTILE and info["class_names"][0] == HOSTILE
    html = (out / "report.html").read_text()
    assert "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("&lt;script&gt;") >= 3  # at least the models table, the heading and the class names


# ---------------------------------------------------------------- refusals: clear errors, exit code 2, no traceback

def _lambda_file(folder: Path) -> Path:
    x = keras.Input((28, 28, 1))
    model = keras.Model(x, layers.Dense(10)(layers.Flatten()(layers.Lambda(lambda t: t * 2.0)(x))))
    model.save(folder / "lambda.keras")
    return folder / "lambda.keras"


def test_safe_mode_refusal_and_unsafe_opt_in(tmp_path):
    path = _lambda_file(tmp_path)
    code, output = run_eval(str(path), "--dataset", "mnist")
    assert code == 2 and "contains Python code" in output and "--unsafe" in output
    # with --unsafe the file loads; the model is then checked against the data (here: the wrong dataset)
    code, output = run_eval(str(path), "--dataset", "cifar10", "--unsafe")
    assert code == 2 and "takes images of shape 28x28x1 but cifar10 images are 32x32x3" in output


def test_corrupt_and_non_model_files_give_clear_errors(tmp_path):
    from test_plugins import corrupt_files

    for name, (path, expect) in corrupt_files(tmp_path).items():
        code, output = run_eval(str(path), "--dataset", "mnist")
        assert code == 2, (name, output)
        assert expect in output, (name, output)


def test_eval_option_errors(tmp_path, monkeypatch):
    plain = tmp_path / "plain.keras"
    x = keras.Input((28, 28, 1))
    keras.Model(x, layers.Dense(10)(layers.Flatten()(x))).save(plain)
    wide = tmp_path / "wide.keras"
    keras.Model(x, layers.Dense(7)(layers.Flatten()(x))).save(wide)
    cases = [
        ((str(plain),), "Its metadata names no dataset; pass --dataset"),
        ((str(plain), "--dataset", "imagenet"), "Unknown dataset 'imagenet'"),
        ((str(wide), "--dataset", "mnist"), "has 7 outputs but mnist has 10 classes"),
        ((str(plain), "--dataset", "mnist", "--eps", "0,8"), "eps.values must be numbers in [0, 1]"),
        ((str(plain), "--dataset", "mnist", "--steps", "5", "--attacks", "fgsm"), "none of fgsm takes steps"),
        ((str(plain), "--dataset", "mnist", "--attacks", "nope"), "Unknown attack 'nope'"),
        ((str(plain), "--dataset", "mnist", "--resume", "--force"), "contradict each other"),
        ((str(plain), "--dataset", "mnist", "--value-range", "1,0"), "expected LO < HI"),
        (("missing_module:factory", "--dataset", "mnist"), "no module 'missing_module'"),
        (("lenet5", "--dataset", "mnist"), "architecture of the zoo"),
    ]
    monkeypatch.chdir(tmp_path)
    for args, message in cases:
        code, output = run_eval(*args)
        assert code == 2, (args, output)
        assert message in output, (args, output)


def test_example_attack_plugin_keeps_the_attack_contract(example_installed):
    """The installed plugin attack: built by name, inside the eps ball and the value range, eps=0 is the image."""
    from robust.attacks import get_attack

    x_in = keras.Input((8, 8, 1))
    model = keras.Model(x_in, layers.Dense(3)(layers.Flatten()(layers.Rescaling(1 / 255)(x_in))))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (16, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    for norm, eps in (("inf", 16.0), ("2", 100.0)):
        res = get_attack("random_noise", eps=eps, norm=norm, tries=3, seed=1)(model, x, y, value_range=(0, 255))
        assert res.attack == "random_noise" and res.x_adv.min() >= 0 and res.x_adv.max() <= 255
        assert res.perturbation.max() <= eps * (1 + 1e-5)
        # a draw replaces the image only when its margin is larger: misclassified images stay misclassified
        wrong = res.clean_pred != y
        assert wrong.any() and np.all(res.adv_pred[wrong] != y[wrong])
        assert res.success.mean() >= wrong.mean()
    zero = get_attack("random_noise", eps=0.0)(model, x, value_range=(0, 255))
    np.testing.assert_array_equal(zero.x_adv, x)
