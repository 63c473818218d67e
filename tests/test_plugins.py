"""Ready models we did not write: model references, the plugin contract, value ranges, safe loading.

Plugins are real distributions: a ``*.dist-info`` folder with ``entry_points.txt``
in a temporary folder on ``sys.path``, found by ``importlib.metadata`` exactly as
an installed package is (the installed example package is in test_cli_eval.py).
"""

from __future__ import annotations

import sys
import textwrap
import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
from click.testing import CliRunner
from keras import layers

from robust import RobustError
from robust.artifacts import save_trained
from robust.cli import main
from robust.models.registry import entries
from robust.plugins import infer_value_range, load_model_ref, reuse


# ---------------------------------------------------------------- helpers

def _clear_registries():
    from robust.attacks import _entries as attack_entries

    entries.cache_clear()
    attack_entries.cache_clear()


@pytest.fixture
def site(tmp_path):
    """A folder on sys.path for fake distributions and their modules; everything is undone afterwards."""
    folder = tmp_path / "site"
    folder.mkdir()
    before = set(sys.modules)
    sys.path.insert(0, str(folder))
    _clear_registries()
    yield folder
    sys.path.remove(str(folder))
    for name in set(sys.modules) - before:
        if getattr(sys.modules[name], "__file__", "") and str(folder) in sys.modules[name].__file__:
            del sys.modules[name]
    _clear_registries()


def make_dist(site: Path, name: str, entry_points: dict[str, dict[str, str]], modules: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees it, with its modules beside it."""
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    text = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items())
                   for group, eps in entry_points.items())
    (info / "entry_points.txt").write_text(text)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


GOOD_MODULE = """
    import keras
    from keras import layers

    from robust.models import ModelPlugin

    def tiny():
        '''A tiny 0-255 ConvNet.'''
        x = keras.Input((28, 28, 1))
        h = layers.Rescaling(1 / 255)(x)
        h = layers.Conv2D(2, 3)(h)
        out = layers.Dense(10)(layers.Flatten()(h))
        return keras.Model(x, out, name="tiny"), {"class_names": [f"c{i}" for i in range(10)], "dataset": "mnist"}

    TINY = ModelPlugin(name="tiny", factory=tiny, description="tiny, as a ModelPlugin")

    def not_a_model():
        return {"weights": [1, 2, 3]}

    NOT_CALLABLE = 42
"""


def fc(shape=(28, 28, 1), *, first=None, softmax=False, classes=10, name="fc"):
    x = keras.Input(shape)
    h = x if first is None else first(x)
    out = layers.Dense(classes, activation="softmax" if softmax else None)(layers.Flatten()(h))
    return keras.Model(x, out, name=name)


@pytest.fixture
def factories(monkeypatch):
    """A module of model factories, importable as ``shapes:NAME`` (module.path:factory references)."""
    import types

    module = types.ModuleType("shapes")
    monkeypatch.setitem(sys.modules, "shapes", module)
    return module


# ---------------------------------------------------------------- the registry

def test_registry_holds_zoo_specs_ready_models_and_broken_plugins(site):
    make_dist(site, "acme-models", {"robust.models": {
        "tiny": "acme_good:TINY",
        "tiny_fn": "acme_good:tiny",
        "broken_import": "acme_broken:factory",
        "not_callable": "acme_good:NOT_CALLABLE",
    }}, {"acme_good": GOOD_MODULE, "acme_broken": "raise ImportError('acme needs libfoo 2.0')\n"})
    with pytest.warns(UserWarning, match="broken_import"):
        reg = entries()
    # a broken plugin does not hide the built-ins or the good plugins
    assert {"lenet5", "mlp"} <= set(reg.specs) and reg.specs["lenet5"].source == "built-in"
    assert set(reg.ready) == {"tiny", "tiny_fn"}
    assert reg.ready["tiny"].source == "plugin acme-models (acme_good:TINY)"
    assert reg.ready["tiny"].description == "tiny, as a ModelPlugin"
    assert reg.ready["tiny_fn"].description == "A tiny 0-255 ConvNet."
    assert "libfoo 2.0" in reg.broken["broken_import"] and "int" in reg.broken["not_callable"]

    # the good plugin still loads; the broken one is an error naming it and why
    loaded = load_model_ref("tiny")
    assert loaded.source == "plugin acme-models (acme_good:TINY)" and loaded.class_names[3] == "c3"
    assert loaded.value_range == (0.0, 255.0) and loaded.dataset == "mnist"
    with pytest.raises(RobustError, match=r"model plugin 'broken_import' from plugin acme-models.*libfoo 2\.0"):
        load_model_ref("broken_import")

    # `robust models` shows both kinds and where each comes from, and keeps working
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 0, res.output
    assert "lenet5" in res.output and "from: built-in" in res.output
    assert "tiny" in res.output and "from: plugin acme-models (acme_good:TINY)" in res.output
    assert "Skipped plugins" in res.output and "libfoo 2.0" in res.output


def test_zoo_names_and_ready_names_are_not_confused(site):
    make_dist(site, "acme-models", {"robust.models": {"tiny": "acme_good:TINY"}}, {"acme_good": GOOD_MODULE})
    from robust.models import get_spec

    with pytest.raises(RobustError, match=r"'lenet5' is an architecture of the zoo.*robust train lenet5"):
        load_model_ref("lenet5")
    with pytest.raises(RobustError, match=r"ready, trained model.*robust eval tiny"):
        get_spec("tiny")
    with pytest.raises(RobustError, match=r"No model 'nonesuch'.*ready models: 'tiny'"):
        load_model_ref("nonesuch")


def test_plugin_breaking_the_contract_is_named(site):
    make_dist(site, "acme-models", {"robust.models": {"bad": "acme_good:not_a_model"}}, {"acme_good": GOOD_MODULE})
    with pytest.raises(RobustError, match=r"model plugin 'bad' from plugin acme-models \(acme_good:not_a_model\) "
                                          r"returned an object of type dict"):
        load_model_ref("bad")


# ---------------------------------------------------------------- the contract, through module:factory

def _lambda_free_multi_input():
    a, b = keras.Input((28, 28, 1)), keras.Input((28, 28, 1))
    return keras.Model([a, b], layers.Dense(10)(layers.Flatten()(layers.Add()([a, b]))))


def _flat_input():
    x = keras.Input((784,))
    return keras.Model(x, layers.Dense(10)(x))


class _NaNs(keras.layers.Layer):
    def call(self, x):
        return x * np.float32("nan")


VIOLATIONS = {
    "returns_int": (lambda: 3, r"returned an object of type int; expected a Keras 3 keras.Model"),
    "returns_pair_without_model": (lambda: ("model", {}), r"the first item must be a Keras 3 keras.Model"),
    "raises": (lambda: 1 / 0, r"raised ZeroDivisionError when called"),
    "one_output": (lambda: fc(classes=1), r"one score per class.*returned shape \(4, 1\)"),
    "bad_value_range": (lambda: (fc(), {"value_range": (255, 0)}), r"metadata 'value_range' must be \(low, high\)"),
    "value_range_not_numbers": (lambda: (fc(), {"value_range": "0-255"}), r"metadata 'value_range'"),
    "unknown_key": (lambda: (fc(), {"range": (0, 1)}), r"unknown metadata key 'range'"),
    "class_names_count": (lambda: (fc(), {"class_names": ["a", "b", "c"]}), r"3 names but the model has 10 outputs"),
    "class_names_not_strings": (lambda: (fc(), {"class_names": list(range(10))}), r"metadata 'class_names'"),
    "outputs_wrong_word": (lambda: (fc(), {"outputs": "softmax"}), r"metadata 'outputs'"),
    "declared_probabilities": (lambda: (fc(), {"outputs": "probabilities"}), r"declares outputs='probabilities'"),
    "declared_logits": (lambda: (fc(softmax=True), {"outputs": "logits"}), r"declares outputs='logits'"),
    "two_inputs": (_lambda_free_multi_input, r"a model with 2 inputs"),
    "not_images": (_flat_input, r"input has shape \(None, 784\); expected images"),
    "nan_scores": (lambda: fc(first=_NaNs()), r"NaN or infinite"),
    "shape_contradiction": (lambda: (fc(), {"input_shape": (32, 32, 3)}), r"contradicts the model's input shape"),
}


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
def test_contract_violations_are_rejected_naming_the_factory(factories, case):
    factory, message = VIOLATIONS[case]
    setattr(factories, case, factory)
    with pytest.raises(RobustError, match=message) as info:
        load_model_ref(f"shapes:{case}")
    assert str(info.value).startswith(f"model factory 'shapes:{case}'")


def test_module_reference_errors(factories):
    from robust.models import get_spec

    factories.zoo_spec = get_spec("mlp")
    with pytest.raises(RobustError, match=r"no module 'no_such_module' to import"):
        load_model_ref("no_such_module:factory")
    with pytest.raises(RobustError, match=r"'shapes' has no attribute 'missing'"):
        load_model_ref("shapes:missing")
    with pytest.raises(RobustError, match=r"names a ModelSpec, an architecture to train"):
        load_model_ref("shapes:zoo_spec")


# ---------------------------------------------------------------- model shapes people ship

class Subclassed(keras.Model):
    def __init__(self):
        super().__init__(name="subclassed")
        self.conv = layers.Conv2D(3, 3)
        self.flat = layers.Flatten()
        self.head = layers.Dense(10)

    def call(self, x, training=False):
        return self.head(self.flat(self.conv(x)))


def test_subclassed_model_needs_and_gets_an_input_shape(factories):
    factories.bare = lambda: Subclassed()
    with pytest.raises(RobustError, match=r"without a keras.Input.*\"input_shape\""):
        load_model_ref("shapes:bare")
    model = Subclassed()
    factories.declared = lambda: (model, {"input_shape": (28, 28, 1)})
    loaded = load_model_ref("shapes:declared")
    assert loaded.input_shape == (28, 28, 1) and loaded.kind == "conv" and loaded.outputs == "logits"
    assert loaded.model.input_shape == (None, 28, 28, 1)  # wrapped with a keras.Input: the study can check shapes
    assert loaded.model.count_params() == model.count_params()
    x = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    np.testing.assert_allclose(np.asarray(loaded.model(x)), np.asarray(model(x)), rtol=1e-6)
    from robust.summary import summarize

    assert summarize(loaded.model).params == model.count_params()  # one opaque row with all the weights


def test_softmax_batchnorm_dropout_and_kind(factories):
    def bn_dropout():
        x = keras.Input((28, 28, 1))
        h = layers.Conv2D(4, 3)(x)
        h = layers.BatchNormalization()(h)
        h = layers.Dropout(0.5)(layers.Flatten()(h))
        return keras.Model(x, layers.Dense(10, activation="softmax")(h))

    factories.bn_dropout = bn_dropout
    factories.dense = lambda: fc()
    loaded = load_model_ref("shapes:bn_dropout")
    assert loaded.outputs == "probabilities" and loaded.kind == "conv"
    assert load_model_ref("shapes:dense").kind == "fc"


# ---------------------------------------------------------------- value ranges

RANGES = {
    "rescaling_255": (lambda: fc(first=layers.Rescaling(1 / 255)), (0.0, 255.0), "Rescaling layer"),
    "rescaling_offset": (lambda: fc(first=layers.Rescaling(1 / 127.5, offset=-1.0)), (0.0, 255.0),
                         "scale 1/127.5, offset -1"),
    "unit_to_symmetric": (lambda: fc(first=layers.Rescaling(2.0, offset=-1.0)), (0.0, 1.0), "scale 2, offset -1"),
    "nested_preprocessing": (lambda: fc(first=keras.Sequential([layers.Rescaling(1 / 255), layers.Identity()])),
                             (0.0, 255.0), "Rescaling layer"),
    "normalization": (lambda: fc(first=layers.Normalization(mean=33.0, variance=6000.0)), (0.0, 1.0),
                      "assumed [0, 1]"),
    "nothing": (lambda: fc(), (0.0, 1.0), "assumed [0, 1]"),
}


@pytest.mark.parametrize("case", sorted(RANGES))
def test_value_range_from_a_leading_rescaling_layer(factories, case):
    factory, expected, source = RANGES[case]
    setattr(factories, case, factory)
    loaded = load_model_ref(f"shapes:{case}")
    assert loaded.value_range == expected
    assert source in loaded.value_range_source
    described = loaded.describe()
    assert f"[{expected[0]:g}, {expected[1]:g}]" in described
    if loaded.value_range_assumed:
        assert "--value-range LO,HI" in described  # the assumption is printed, with the way out
    if case == "normalization":
        assert "Normalization" in described


def test_metadata_then_value_range_then_rescaling(factories):
    factories.declared = lambda: (fc(first=layers.Rescaling(1 / 255)), {"value_range": (-1, 1)})
    factories.rescaled = lambda: fc(first=layers.Rescaling(1 / 255))
    factories.plain = lambda: fc()
    loaded = load_model_ref("shapes:declared")
    assert loaded.value_range == (-1.0, 1.0) and loaded.value_range_source == "factory metadata"
    with pytest.raises(RobustError, match=r"declares its inputs in \[-1, 1\].*--value-range gives \[0, 255\]"):
        load_model_ref("shapes:declared", value_range=(0, 255))
    assert load_model_ref("shapes:declared", value_range=(-1, 1)).value_range_source == "factory metadata"

    # A --value-range that contradicts the model's own Rescaling layer is refused, naming the range it implies.
    with pytest.raises(RobustError, match=r"Rescaling layer .* takes pixels in \[0, 255\], but --value-range gives "
                                          r"\[0, 1\].*off by a factor of 255.*--value-range 0,255"):
        load_model_ref("shapes:rescaled", value_range=(0, 1))
    # Metadata that contradicts the layer wins (the author said so), with a warning that names both.
    declared = load_model_ref("shapes:declared")
    assert "warning: its Rescaling layer" in declared.describe() and "says [-1, 1]" in declared.describe()
    agreeing = load_model_ref("shapes:rescaled", value_range=(0, 255))
    assert "Rescaling layer" in agreeing.value_range_source

    given = load_model_ref("shapes:plain", value_range=(0, 255))
    assert given.value_range == (0.0, 255.0) and given.value_range_source == "--value-range"
    with pytest.raises(RobustError, match=r"low < high"):
        load_model_ref("shapes:plain", value_range=(1, 1))


def test_per_channel_rescaling_gives_no_range():
    model = fc((8, 8, 3), first=layers.Rescaling([1 / 255, 1 / 200, 1 / 100]))
    guess, why = infer_value_range(model)
    assert guess is None and "per channel" in why


def test_reuse_calls_a_factory_once(factories):
    calls = []

    def counted():
        calls.append(1)
        return fc(first=layers.Rescaling(1 / 255))

    factories.counted = counted
    first = load_model_ref("shapes:counted")
    with reuse(first):
        again = load_model_ref("shapes:counted", value_range=(0, 255))
    assert len(calls) == 1 and again.model is first.model
    assert load_model_ref("shapes:counted").model is not first.model and len(calls) == 2


# ---------------------------------------------------------------- files: safe mode, corrupt files, train folders

def _save(model, path: Path) -> Path:
    model.save(path)
    return path


def test_keras_file_and_train_folder(tmp_path):
    plain = _save(fc(first=layers.Rescaling(1 / 255)), tmp_path / "plain.keras")
    loaded = load_model_ref(plain)
    assert loaded.name == "plain" and loaded.source == str(plain) and loaded.value_range == (0.0, 255.0)

    folder = tmp_path / "trained"
    save_trained(folder, fc(), {"model": "mlp", "dataset": "fashion_mnist", "value_range": [0.0, 1.0],
                                "class_names": [f"k{i}" for i in range(10)], "test_accuracy": 0.5})
    card_loaded = load_model_ref(folder)
    assert card_loaded.name == "trained" and card_loaded.dataset == "fashion_mnist"
    assert card_loaded.value_range_source == "model card" and card_loaded.class_names[9] == "k9"


def _lambda_model():
    x = keras.Input((28, 28, 1))
    return keras.Model(x, layers.Dense(10)(layers.Flatten()(layers.Lambda(lambda t: t * 2.0)(x))))


def test_safe_mode_refuses_code_and_unsafe_opts_in(tmp_path):
    path = _save(_lambda_model(), tmp_path / "lambda.keras")
    with pytest.raises(RobustError, match=r"contains Python code.*--unsafe"):
        load_model_ref(path)
    loaded = load_model_ref(path, unsafe=True)
    assert loaded.unsafe and "safe mode off" in loaded.describe()
    x = np.full((1, 28, 28, 1), 0.5, np.float32)
    assert np.isfinite(np.asarray(loaded.model(x))).all()


def corrupt_files(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not models, each with the words its error must contain."""
    good = _save(fc(), folder / "good.keras").read_bytes()
    files = {}

    def put(name, data, expect):
        path = folder / name
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        files[name] = (path, expect)

    put("truncated.keras", good[: len(good) // 2], "corrupt or truncated")
    put("empty.keras", b"", "corrupt or truncated")
    put("text.keras", "not a model", "corrupt or truncated")
    put("weights.h5", good, "not a .keras file")
    with zipfile.ZipFile(folder / "other_zip.keras", "w") as z:
        z.writestr("readme.txt", "hello")
    files["other_zip.keras"] = (folder / "other_zip.keras", "could not be loaded as a Keras model")
    with zipfile.ZipFile(folder / "good.keras") as src, zipfile.ZipFile(folder / "bad_weights.keras", "w") as z:
        for item in src.namelist():
            z.writestr(item, b"garbage" if item.endswith(".h5") else src.read(item))
    files["bad_weights.keras"] = (folder / "bad_weights.keras", "could not be loaded as a Keras model")
    layer = layers.Dense(3)
    layer.build((None, 4))
    from keras.src.saving import saving_lib

    saving_lib.save_model(layer, folder / "layer.keras")
    files["layer.keras"] = (folder / "layer.keras", "holds a Dense, not a model")
    (folder / "no_model_dir").mkdir()
    files["no_model_dir"] = (folder / "no_model_dir", "folder without model.keras")
    files["missing.keras"] = (folder / "missing.keras", "No model at")
    return files


def test_corrupt_truncated_and_non_model_files(tmp_path):
    for name, (path, expect) in corrupt_files(tmp_path).items():
        with pytest.raises(RobustError, match=expect):
            load_model_ref(path)


def test_card_with_bad_metadata_is_named(tmp_path):
    folder = tmp_path / "odd"
    save_trained(folder, fc(), {"value_range": [1, 0]})
    with pytest.raises(RobustError, match=r"model card .*model.json: metadata 'value_range'"):
        load_model_ref(folder)
    (folder / "model.json").write_text("{not json")
    with pytest.raises(RobustError, match=r"not a readable model card"):
        load_model_ref(folder)
