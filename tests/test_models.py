"""The zoo: every model builds, accepts its shapes, outputs logits; readable errors for the rest."""

from __future__ import annotations

import numpy as np
import pytest

from robust import RobustError
from robust.models import build_model, check_model_input, count_params, get_spec, registry
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
