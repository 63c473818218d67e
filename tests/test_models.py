"""The zoo: every model builds, accepts its shapes, outputs logits; readable errors for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from robust import RobustError
from robust.models import Option, build_model, check_buildable, check_model_input, count_params, get_spec, registry
from robust.models.mlp import matched_width

SMALL = {  # name -> (input shape, options) small enough to build and run quickly
    "mlp": ((28, 28, 1), {}),
    "lenet5": ((28, 28, 1), {}),
    "alexnet_small": ((32, 32, 3), {"width": 16}),
    "vgg11": ((32, 32, 3), {"width": 0.125}),
    "vgg13": ((32, 32, 3), {"width": 0.125, "batch_norm": True}),
    "vgg16": ((32, 32, 3), {"width": 0.125}),
    "vgg19": ((32, 32, 3), {"width": 0.125}),
}


def test_registry_lists_builtins_from_entry_points():
    specs = registry()
    assert set(SMALL) <= set(specs)
    assert all(specs[n].source == "built-in" for n in SMALL)
    assert specs["mlp"].kind == "fc" and specs["lenet5"].kind == "conv"


@pytest.mark.parametrize("name", sorted(SMALL))
def test_every_model_builds_and_outputs_logits(name):
    shape, options = SMALL[name]
    model = build_model(name, shape, 7, **options)
    x = np.random.default_rng(0).random((3, *shape), dtype=np.float32)
    out = np.asarray(model(x, training=False))
    assert out.shape == (3, 7)
    # logits, not probabilities: rows need not sum to one and may be negative
    assert not np.allclose(out.sum(axis=1), 1.0) or (out < 0).any()
    assert model.layers[-1].name == "predictions"
    assert model.layers[-1].get_config().get("activation") in (None, "linear")


def test_lenet5_matches_the_1998_layout():
    model = build_model("lenet5", (28, 28, 1), 10)
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in model.layers}
    assert shapes["pad"] == (32, 32, 1) and shapes["c1"] == (28, 28, 6) and shapes["s2"] == (14, 14, 6)
    assert shapes["c3"] == (10, 10, 16) and shapes["s4"] == (5, 5, 16) and shapes["c5"] == (1, 1, 120)
    assert shapes["f6"] == (84,)
    # C1 156, C3 2416, C5 48120, F6 10164, output 850 (full C3 connection table)
    assert count_params(model) == 156 + 2416 + 48120 + 10164 + 850


def test_vgg16_imagenet_head_has_the_keras_parameter_count():
    model = build_model("vgg16", (224, 224, 3), 1000)
    assert count_params(model) == 138_357_544
    assert [layer.name for layer in model.layers[-3:]] == ["fc2", "dropout2", "predictions"]


def test_vgg_cifar_head_and_width():
    model = build_model("vgg11", (32, 32, 3), 10, width=0.5)
    assert model.get_layer("block1_conv1").filters == 32 and model.get_layer("fc1").units == 256
    assert "fc2" not in [layer.name for layer in model.layers]


def test_mlp_depth_width_and_match():
    model = build_model("mlp", (28, 28, 1), 10, depth=3, width=64, dropout=0)
    assert [l.name for l in model.layers if l.name.startswith("fc")] == ["fc1", "fc2", "fc3"]
    assert count_params(model) == 785 * 64 + 2 * 65 * 64 + 65 * 10
    lenet = count_params(build_model("lenet5", (28, 28, 1), 10))
    matched = build_model("mlp", (28, 28, 1), 10, match="lenet5")
    assert matched.name == "mlp_match_lenet5"
    assert abs(count_params(matched) - lenet) / lenet < 0.01
    params = lambda w: 785 * w + (w + 1) * w + (w + 1) * 10  # noqa: E731
    w = matched_width(100_000, 784, 10, depth=2)
    assert abs(params(w) - 100_000) <= min(abs(params(w - 1) - 100_000), abs(params(w + 1) - 100_000))


def test_unknown_name_lists_known_names():
    with pytest.raises(RobustError, match=r"Unknown model 'resnet'. Known models: .*'lenet5'.*'vgg16'"):
        get_spec("resnet")


def test_shape_errors_are_readable():
    with pytest.raises(RobustError, match=r"'vgg11' cannot take images of shape 28x28x1.*at least 32"):
        build_model("vgg11", (28, 28, 1), 10)
    with pytest.raises(RobustError, match="rank 3"):
        build_model("lenet5", (28, 28), 10)
    with pytest.raises(RobustError, match="has no option 'depth'"):
        build_model("lenet5", (28, 28, 1), 10, depth=3)
    model = build_model("lenet5", (28, 28, 1), 10)
    with pytest.raises(RobustError, match=r"expects images of shape 28x28x1 .* cifar10 has images of shape 32x32x3"):
        check_model_input(model, (32, 32, 3), data_name="cifar10")
    check_model_input(model, (28, 28, 1))


@pytest.mark.parametrize("name, options, message", [
    ("mlp", {"width": "abc"}, r"option width must be an integer in \[1, 65536\]; received 'abc'"),
    ("mlp", {"depth": 1.5}, r"option depth must be an integer in \[1, 64\]; received 1.5"),
    ("mlp", {"depth": True}, r"option depth must be an integer .*; received True"),
    ("mlp", {"dropout": 2}, r"option dropout must be a number in \[0, 1\); received 2"),
    ("mlp", {"dropout": float("nan")}, r"option dropout must be a number in \[0, 1\); received nan"),
    ("mlp", {"match": "mlp"}, r"match must name a ConvNet"),
    ("mlp", {"match_options": {"width": 2}}, r"match_options applies only with match=MODEL"),
    ("mlp", {"match": "alexnet_small", "match_options": {"width": 0}},
     r"option match='alexnet_small': Model 'alexnet_small' option width must be an integer in \[1, 4096\]"),
    ("lenet5", {"activation": "foo"}, r"option activation must be one of 'relu', 'tanh'.*; received 'foo'"),
    ("lenet5", {"pooling": "median"}, r"option pooling must be one of 'max', 'avg'; received 'median'"),
    ("vgg11", {"width": 0}, r"option width must be a number in \[0.015625, 16\]; received 0"),
    ("vgg11", {"batch_norm": 1}, r"option batch_norm must be true or false; received 1"),
    ("vgg11", {"head": "resnet"}, r"option head must be one of 'auto', 'cifar', 'imagenet'"),
])
def test_options_are_checked_against_their_declarations_before_building(name, options, message):
    with pytest.raises(RobustError, match=message):
        check_buildable(name, (32, 32, 3), 10, options)
    with pytest.raises(RobustError, match=message):
        build_model(name, (32, 32, 3), 10, **options)


def test_declared_options_normalise_and_plugins_without_declarations_get_inferred_types():
    assert check_buildable("vgg11", (32, 32, 3), 10, {"width": 1}) == {"width": 1.0}
    assert check_buildable("mlp", (28, 28, 1), 10, {"match": None}) == {"match": None}
    assert Option.infer(3).kind == "int" and Option.infer(0.5).kind == "float" and Option.infer(True).kind == "bool"
    assert Option.infer(None).check("anything") == "anything"
    assert Option(1, "int", minimum=1).expected() == "an integer >= 1"
    with pytest.raises(ValueError, match="a number in"):
        Option(0.5, "float", minimum=0, maximum=1).check("0.5")
