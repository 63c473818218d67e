"""robust.summary and `robust summary`: counts checked against hand computation."""

from __future__ import annotations

import json
import math

import keras
import pytest
from click.testing import CliRunner

from robust.cli import main
from robust.errors import RobustError
from robust.models import build_model
from robust.summary import format_summary, summarize


def conv(k, c_in, c_out):
    """(weights, biases) of a k x k convolution."""
    return k * k * c_in * c_out, c_out


def dense(n_in, n_out):
    return n_in * n_out, n_out


def test_lenet5_by_hand():
    s = summarize(build_model("lenet5", (28, 28, 1), 10))
    # (name, output shape, (weights, biases)); 28x28 is zero-padded to 32x32 as in the paper.
    expected = [
        ("image", (28, 28, 1), (0, 0)),
        ("pad", (32, 32, 1), (0, 0)),
        ("c1", (28, 28, 6), conv(5, 1, 6)),
        ("s2", (14, 14, 6), (0, 0)),
        ("c3", (10, 10, 16), conv(5, 6, 16)),
        ("s4", (5, 5, 16), (0, 0)),
        ("c5", (1, 1, 120), conv(5, 16, 120)),
        ("flatten", (120,), (0, 0)),
        ("f6", (84,), dense(120, 84)),
        ("predictions", (10,), dense(84, 10)),
    ]
    assert [r.name for r in s.rows] == [e[0] for e in expected]
    for row, (name, shape, (w, b)) in zip(s.rows, expected):
        assert row.output_shape == shape, name
        assert (row.weights, row.biases) == (w, b), name
        assert row.activations == (0 if name == "flatten" else math.prod(shape)), name
    params = sum(w + b for _, _, (w, b) in expected)
    activations = sum(math.prod(shape) for name, shape, _ in expected if name != "flatten")
    assert s.params == params == 61_706
    assert s.trainable_params == params
    assert s.activations == activations == 9_902
    assert s.bytes_forward == 4 * activations
    assert s.bytes_forward_backward == 8 * activations


def test_vgg16_at_224_by_hand():
    model = build_model("vgg16", (224, 224, 3), 1000)
    s = summarize(model)
    blocks = [(64, 2), (128, 2), (256, 3), (512, 3), (512, 3)]
    size, c_in = 224, 3
    params, conv_acts, pool_acts = 0, 0, 0
    for filters, convs in blocks:
        for _ in range(convs):
            params += sum(conv(3, c_in, filters))
            conv_acts += size * size * filters
            c_in = filters
        size //= 2
        pool_acts += size * size * filters
    fc_in = size * size * c_in  # 7 x 7 x 512 = 25,088
    for n_in, n_out in ((fc_in, 4096), (4096, 4096), (4096, 1000)):
        params += sum(dense(n_in, n_out))
    fc_acts = 4096 + 4096 + 1000
    input_acts = 224 * 224 * 3
    activations = input_acts + conv_acts + pool_acts + fc_acts

    assert params == 138_357_544  # keras.applications.VGG16(weights=None).count_params()
    assert s.params == params == model.count_params()
    assert s.activations == activations == 15_237_608
    assert s.bytes_forward == 4 * activations  # 61.0 MB, not the course table's "24M -> 93MB"
    assert s.bytes_forward_backward == 2 * s.bytes_forward
    assert s.rows[-1].name == "predictions" and s.rows[-1].output_shape == (1000,)
    assert s.weights + s.biases == params
    assert s.biases == sum(f * n for f, n in blocks) + fc_acts


def test_batch_norm_weights_and_biases_add_up():
    model = build_model("vgg11", (32, 32, 3), 10, width=0.25, batch_norm=True)
    s = summarize(model)
    bn = next(r for r in s.rows if r.type == "BatchNormalization")
    # gamma, moving mean and moving variance are weights; beta is the bias.
    assert (bn.weights, bn.biases) == (3 * 16, 16)
    assert s.weights + s.biases == s.params == model.count_params()
    assert s.trainable_params < s.params  # the moving statistics are not trained


def test_dropout_flatten_add_no_activations_but_keep_shape():
    s = summarize(build_model("mlp", (28, 28, 1), 10))
    by_name = {r.name: r for r in s.rows}
    assert by_name["flatten"].output_shape == (784,) and by_name["flatten"].activations == 0
    assert by_name["dropout1"].activations == 0
    assert s.activations == 784 + 512 + 512 + 10


def test_sequential_and_nested_models():
    inner = keras.Sequential([keras.Input((8, 8, 2)), keras.layers.Conv2D(4, 3, name="conv"),
                              keras.layers.Flatten(name="flat")], name="features")
    inputs = keras.Input((8, 8, 2), name="img")
    outputs = keras.layers.Dense(3, name="out")(inner(inputs))
    s = summarize(keras.Model(inputs, outputs, name="outer"))
    names = [r.name for r in s.rows]
    assert names == ["img", "features/conv", "features/flat", "out"]  # the inner input is the outer image
    assert s.rows[1].output_shape == (6, 6, 4) and s.rows[1].weights == 3 * 3 * 2 * 4
    assert s.params == inner.count_params() + 6 * 6 * 4 * 3 + 3
    assert s.activations == 8 * 8 * 2 + 6 * 6 * 4 + 3

    seq = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, name="d")])
    assert [(r.type, r.activations) for r in summarize(seq).rows] == [("InputLayer", 5), ("Dense", 2)]


def test_model_of_any_size_needs_a_shape():
    inputs = keras.Input((None, None, 1))
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(inputs)
    outputs = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    model = keras.Model(inputs, outputs)
    with pytest.raises(RobustError, match="input-shape"):
        summarize(model)
    s = summarize(model, (10, 12, 1))
    assert s.input_shape == (10, 12, 1)
    assert s.activations == 10 * 12 * 1 + 10 * 12 * 2 + 2
    with pytest.raises(RobustError, match="expects images of shape"):
        summarize(model, (10, 12, 3))


def test_format_and_json():
    s = summarize(build_model("lenet5", (28, 28, 1), 10))
    text = format_summary(s)
    assert "c1 (Conv2D)" in text and "28x28x6" in text and "61,706" in text and "9,902" in text
    d = json.loads(json.dumps(s.to_dict()))
    assert d["totals"]["activations"] == 9_902 and d["totals"]["params"] == 61_706
    assert d["rows"][2] == {"name": "c1", "type": "Conv2D", "output_shape": [28, 28, 6], "activations": 4704,
                            "weights": 150, "biases": 6,
                            "receptive_field": {"size": [5, 5], "jump": [1, 1], "start": [-2, -2],
                                                "image": [28, 28], "spatial": True}}
    assert "5 px, step 1" in text and "whole image" in text


def test_cli_summary_zoo_and_saved(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["summary", "lenet5", "--dataset", "mnist"])
    assert res.exit_code == 0, res.output
    assert "Activations: 9,902 per image" in res.output
    path = tmp_path / "m.keras"
    build_model("lenet5", (32, 32, 3), 10).save(path)
    res = runner.invoke(main, ["summary", str(path), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["input_shape"] == [32, 32, 3]


@pytest.mark.parametrize("args, message", [
    (["nonesuch", "--dataset", "mnist"], "Unknown model 'nonesuch'"),
    (["vgg11", "--dataset", "mnist"], "cannot take images of shape 28x28x1"),
    (["lenet5"], "needs the image shape"),
    (["lenet5", "--input-shape", "28,28,x"], "Invalid value for '--input-shape'"),
    (["lenet5", "--input-shape", "28,0,1"], "Invalid value for '--input-shape'"),
    (["lenet5", "--dataset", "svhn"], "Unknown dataset 'svhn'"),
    (["lenet5", "--input-shape", "28,28,1", "--classes", "1"], "Invalid value for '--classes'"),
    (["missing/model.keras"], "No model at"),
])
def test_cli_summary_bad_input(args, message):
    res = CliRunner().invoke(main, ["summary", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_a_subclassed_block_inside_a_functional_model_is_one_row():
    import keras

    from robust.summary import summarize

    class Block(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.conv = keras.layers.Conv2D(4, 3, padding="same")

        def call(self, x):
            return keras.ops.relu(self.conv(x))

    inputs = keras.Input((8, 8, 1))
    x = Block(name="block")(inputs)
    outputs = keras.layers.Dense(3, name="predictions")(keras.layers.Flatten()(x))
    summary = summarize(keras.Model(inputs, outputs))
    rows = {row.name: row for row in summary.rows}
    assert rows["block"].output_shape == (8, 8, 4) and rows["block"].activations == 8 * 8 * 4
    assert rows["block"].weights == 3 * 3 * 1 * 4 and rows["block"].biases == 4
    assert summary.to_dict()["totals"]["params"] == 3 * 3 * 4 + 4 + (8 * 8 * 4 + 1) * 3


# ---------------------------------------------------------------- receptive fields

def _fields(model):
    from robust.summary import receptive_fields

    return receptive_fields(model)


def test_receptive_field_vgg16_known_values():
    """VGG-16 at 224: conv5_3 sees 196 pixels, pool5 212 (the values quoted for VGG-16 everywhere)."""
    rf = _fields(build_model("vgg16", (224, 224, 3), 1000))
    assert rf["block5_conv3"].size == (196, 196) and rf["block5_conv3"].jump == (16, 16)
    assert rf["block5_pool"].size == (212, 212) and rf["block5_pool"].jump == (32, 32)
    # 3x3 'same' convolutions pad one pixel, counted in units of the current step: 1+1+2+2+4*3+8*3+16*3 = 90.
    assert rf["block5_conv3"].start == (-90, -90)
    assert not rf["fc1"].spatial
    # The same layers at CIFAR size: the field does not depend on the image size, the padding does not change.
    cifar = _fields(build_model("vgg11", (32, 32, 3), 10, width=0.25))
    assert cifar["block1_conv1"].size == (3, 3) and cifar["block5_pool"].jump == (32, 32)


def test_receptive_field_lenet5_by_hand():
    rf = _fields(build_model("lenet5", (28, 28, 1), 10))
    # size r, step j: a k-kernel adds (k - 1) j, a stride s multiplies j by s.
    # c1 5x5: r 5, j 1; s2 2x2/2: r 5 + 1 = 6, j 2; c3 5x5: r 6 + 4*2 = 14; s4: r 14 + 2 = 16, j 4;
    # c5 5x5: r 16 + 4*4 = 32, j 4. The 28x28 image is padded by 2 on top and left, so every field starts at -2.
    expected = {"c1": (5, 1), "s2": (6, 2), "c3": (14, 2), "s4": (16, 4), "c5": (32, 4)}
    for name, (size, jump) in expected.items():
        assert rf[name].size == (size, size) and rf[name].jump == (jump, jump), name
        assert rf[name].start == (-2, -2), name
    assert rf["image"].size == (1, 1) and rf["pad"].start == (-2, -2)
    assert not rf["f6"].spatial and rf["f6"].describe() == "whole image"
    # Unit (3, 4) of c3 sees rows -2 + 3*2 .. +14 and columns -2 + 4*2 .. +14.
    assert rf["c3"].box(3, 4) == (4, 6, 18, 20)
    assert rf["c1"].clipped_box(0, 0) == (0, 0, 3, 3)


def test_receptive_field_strided_same_padding_and_merge():
    inputs = keras.Input((9, 9, 1))
    a = keras.layers.Conv2D(2, 3, strides=2, padding="same", name="a")(inputs)   # 9 -> 5, pad total 2, 1 before
    b = keras.layers.Conv2D(2, 1, strides=2, name="b")(inputs)                   # 1x1 stride 2
    m = keras.layers.Add(name="add")([keras.layers.Rescaling(2.0, name="scale")(a), b])
    up = keras.layers.UpSampling2D(name="up")(m)
    out = keras.layers.GlobalAveragePooling2D(name="gap")(up)
    rf = _fields(keras.Model(inputs, out))
    assert (rf["a"].size, rf["a"].jump, rf["a"].start) == ((3, 3), (2, 2), (-1, -1))
    assert (rf["b"].size, rf["b"].start) == ((1, 1), (0, 0))
    assert rf["scale"] == rf["a"]
    assert (rf["add"].size, rf["add"].start) == ((3, 3), (-1, -1))     # the union of both branches
    assert rf["up"] is None                                           # unknown: upsampling is not a window
    s = summarize(keras.Model(inputs, out))
    assert "?" in format_summary(s)


def test_summary_of_a_huge_input_counts_without_allocating():
    """Issue 12, item 8: 100000x100000x3 used to end in an out-of-memory traceback; shapes are enough."""
    result = CliRunner().invoke(main, ["summary", "mlp", "--input-shape", "100000,100000,3", "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    pixels = 100_000 * 100_000 * 3
    assert d["totals"]["params"] == (pixels + 1) * 512 + 513 * 512 + 513 * 10
    assert d["totals"]["activations"] == pixels + 512 + 512 + 10


def test_receptive_field_through_a_nested_model():
    """A functional model used as a layer (as Keras Applications are) is walked inside, with outer/inner names."""
    inner_in = keras.Input((17, 18, 3))
    inner = keras.Model(inner_in, keras.layers.MaxPooling2D(2, name="pool")(
        keras.layers.Conv2D(4, 3, padding="same", name="conv")(inner_in)), name="trunk")
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Cropping2D(((1, 0), (0, 0)), name="crop")(keras.layers.ZeroPadding2D(1, name="pad")(inputs))
    x = inner(keras.layers.Rescaling(1 / 255, name="scale")(x))  # 17x18 -> trunk
    model = keras.Model(inputs, keras.layers.Conv2D(2, 3, name="head")(x))
    rf = _fields(model)
    # pad moves the start to -1, the crop of one top row moves rows back to 0; 'same' 3x3 pads one more.
    assert rf["crop"].start == (0, -1)
    assert (rf["trunk/conv"].size, rf["trunk/conv"].start) == ((3, 3), (-1, -2))
    assert (rf["trunk/pool"].size, rf["trunk/pool"].jump) == ((4, 4), (2, 2))
    assert (rf["head"].size, rf["head"].jump, rf["head"].start) == ((8, 8), (2, 2), (-1, -2))
    rows = {r.name: r.receptive_field for r in summarize(model).rows}
    assert rows["trunk/pool"] == rf["trunk/pool"] and rows["head"] == rf["head"]
