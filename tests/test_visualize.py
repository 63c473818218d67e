"""robust.visualize and `robust visualize`: activation maximisation, top images, receptive-field crops, locality."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
from click.testing import CliRunner

from robust.cli import main
from robust.errors import RobustError
from robust.models import build_model
from robust.visualize import (
    ActivationMaximization,
    choose_layers,
    locality,
    report_arrays,
    top_images,
    window_fraction,
)


@pytest.fixture(scope="module")
def lenet(mnist):
    """LeNet-5 after one epoch on 2,000 real MNIST images (about 80% accurate): trained, not random, filters."""
    keras.utils.set_random_seed(0)
    small = mnist.limited(2000, seed=0)
    model = build_model("lenet5", mnist.input_shape, mnist.num_classes)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(small.x_train, small.y_train, batch_size=64, epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def images(mnist):
    from robust.data import balanced_indices

    return mnist.x_test[balanced_indices(mnist.y_test, 300, seed=2)]


def _high_frequency_energy(images: np.ndarray) -> np.ndarray:
    """Per image: the share of spectral energy (mean removed) above a quarter of the sampling frequency."""
    x = images[..., 0] - images[..., 0].mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(x)) ** 2
    fy, fx = np.meshgrid(np.fft.fftfreq(x.shape[1]), np.fft.fftfreq(x.shape[2]), indexing="ij")
    high = np.hypot(fy, fx) > 0.25
    return power[:, high].sum(1) / np.maximum(power.sum((1, 2)), 1e-30)


def test_activation_maximisation_raises_every_conv_unit_tenfold(lenet):
    targets = [("c1", u) for u in range(6)] + [("c3", u) for u in range(16)]
    result = ActivationMaximization(steps=200, seed=0)(lenet, targets)
    assert result.images.shape == (22, 28, 28, 1)
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    gains = result.value / np.abs(result.start)
    assert np.all(result.value > 0)
    assert np.all(gains >= 10), dict(zip([f"{n}:{u}" for n, u in targets], np.round(gains, 1)))
    # One batch, one compiled loop: each image moved its own unit (the others were not asked for).
    from robust.visualize import target_values

    again = np.asarray(target_values(lenet, targets)(result.images))
    np.testing.assert_allclose(again, result.value, rtol=1e-4, atol=1e-5)


def test_blur_lowers_high_frequency_energy(lenet):
    targets = [("c3", u) for u in range(8)]
    common = dict(steps=120, jitter=0, norm_pct=0.0, contribution_pct=0.0, l2_decay=0.0, seed=1)
    sharp = ActivationMaximization(blur_every=0, **common)(lenet, targets)
    blurred = ActivationMaximization(blur_every=2, blur_sigma=1.0, **common)(lenet, targets)
    hf_sharp, hf_blurred = _high_frequency_energy(sharp.images), _high_frequency_energy(blurred.images)
    assert hf_blurred.mean() < 0.7 * hf_sharp.mean(), (hf_blurred, hf_sharp)


def test_top_images_match_brute_force_and_crop_the_receptive_field(lenet, images):
    units = {"c3": [0, 5, 11], "s2": [2], "f6": [0, 3]}
    tops = top_images(lenet, images, units, k=5, batch_size=64)  # several batches merged
    for name, chosen in units.items():
        acts = np.asarray(keras.Model(lenet.input, lenet.get_layer(name).output).predict(images, verbose=0))
        for row, u in enumerate(chosen):
            per_image = acts[..., u].reshape(len(images), -1).max(1)
            left, expected = per_image.copy(), []
            for _ in range(5):                     # brute force: repeated argmax
                expected.append(int(np.argmax(left)))
                left[expected[-1]] = -np.inf
            got = tops[name]
            np.testing.assert_array_equal(got.index[row], expected)
            np.testing.assert_allclose(got.value[row], per_image[expected], rtol=1e-5, atol=1e-6)
    c3 = tops["c3"]
    for row, u in enumerate(units["c3"]):
        for k in range(5):
            img = int(c3.index[row, k])
            i, j = c3.position[row, k]
            fmap = np.asarray(keras.Model(lenet.input, lenet.get_layer("c3").output)(images[img:img + 1]))[0, ..., u]
            assert fmap[i, j] == pytest.approx(fmap.max(), rel=1e-5)
            # c3's field, by hand: 14 px, step 2, starting at -2 (the 2-pixel padding to 32x32).
            top, left = -2 + 2 * i, -2 + 2 * j
            assert tuple(c3.box[row, k]) == (top, left, top + 14, left + 14)
            crop = c3.crops[row, k]
            assert crop.shape == (14, 14, 1)
            inside = images[img, max(top, 0):top + 14, max(left, 0):left + 14]
            np.testing.assert_array_equal(crop[max(-top, 0):max(-top, 0) + inside.shape[0],
                                               max(-left, 0):max(-left, 0) + inside.shape[1]], inside)
            assert np.isnan(crop).sum() == 14 * 14 - inside.size     # only the padding is missing
    # f6 has no spatial output: "auto" shows whole images.
    assert tops["f6"].crops.shape == (2, 5, 28, 28, 1)
    np.testing.assert_array_equal(tops["f6"].crops[0, 0], images[tops["f6"].index[0, 0]])


def test_no_spatial_output_cannot_be_cropped(lenet, images):
    with pytest.raises(RobustError, match=r"'f6' \(Dense\).*no spatial axes.*whole image"):
        top_images(lenet, images, {"f6": [0]}, k=3, crop=True)


def test_unknown_layer_lists_the_layers(lenet):
    with pytest.raises(RobustError, match=r"no layer named 'conv9'.*c1, s2, c3, s4, c5, flatten, f6, predictions"):
        choose_layers(lenet, "c1,conv9")
    with pytest.raises(RobustError, match="has 16 units"):
        ActivationMaximization(steps=1)(lenet, [("c3", 16)])
    assert choose_layers(lenet, None) == ["c1", "c3", "c5"]
    assert choose_layers(build_model("mlp", (28, 28, 1), 10), None) == ["fc1", "fc2"]
    with pytest.raises(RobustError, match="no convolution layer"):
        choose_layers(build_model("mlp", (28, 28, 1), 10), "conv")


def test_locality_conv_against_mlp(lenet, images):
    conv = locality(lenet, images)
    assert conv.shape == (6,)
    np.testing.assert_allclose(conv, 1.0, atol=1e-5)                 # a 5x5 kernel: all of it in one 5x5 window
    keras.utils.set_random_seed(0)
    mlp = locality(build_model("mlp", (28, 28, 1), 10), images, max_units=64)
    assert mlp.shape == (64,) and np.all(mlp < 0.2)                    # spread over the whole image
    # The measure itself: an even spread keeps 25 / (H W), a point keeps everything.
    even, point = np.ones((1, 28, 28)), np.zeros((1, 28, 28))
    point[0, 3, 20] = 2.0
    assert window_fraction(even, 5)[0] == pytest.approx(25 / 784)
    assert window_fraction(point, 5)[0] == pytest.approx(1.0)


def test_plugin_style_model_with_rescaling_front(images):
    """A functional model on 0-255 pixels with a Rescaling front: fields pass through, values are in its range."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, 1))
    x = keras.layers.Rescaling(1 / 255, name="scale")(inputs)
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.MaxPooling2D(2, name="pool")(x)
    outputs = keras.layers.Dense(10, name="logits")(keras.layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    grown = ActivationMaximization(steps=30)(model, [("conv", u) for u in range(4)], value_range=(0, 255))
    assert grown.images.max() <= 255 and grown.images.max() > 1.0
    assert np.all(grown.value > grown.start)
    tops = top_images(model, images * 255, {"pool": [0, 1]}, k=3)
    assert tops["pool"].receptive_field.size == (4, 4) and tops["pool"].crops.shape == (2, 3, 4, 4, 1)


def test_subclassed_model_is_left_out_of_the_report(images):
    """A subclassed model has no graph to read inner activations from: no section, not a crash."""
    from robust.visualize import why_not_visualizable

    class Small(keras.Model):
        def __init__(self):
            super().__init__()
            self.conv, self.flat, self.out = keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(10)

        def call(self, x):
            return self.out(self.flat(self.conv(x)))

    model = Small()
    model(images[:1])
    assert "subclassed" in why_not_visualizable(model)
    assert report_arrays(model, images[:10], steps=2) == {}


def test_report_arrays_for_a_random_vgg():
    """Random weights, VGG-11 at CIFAR size: three layers spread over the network, crops capped at the image."""
    keras.utils.set_random_seed(0)
    model = build_model("vgg11", (32, 32, 3), 10, width=0.125)
    x = np.random.default_rng(0).uniform(0, 1, (40, 32, 32, 3)).astype(np.float32)
    arrays = report_arrays(model, x, units=2, top=3, steps=10)
    names = [str(n) for n in arrays["learned_layers"]]
    assert names == ["block1_conv1", "block4_conv1", "block5_conv2"]
    assert arrays["learned0_max"].shape == (2, 3, 3, 3)                # cut to the 3x3 field
    assert arrays["learned2_top"].shape == (2, 3, 32, 32, 3)           # the field is larger than the image
    assert list(arrays["learned0_rf"]) == [3, 3, 1, 1, -1, -1, 1]
    assert arrays["learned_locality"].shape == (8,)


def test_cli_visualize(tmp_path, lenet, data_dir):
    path = tmp_path / "lenet.keras"
    lenet.save(path)
    runner = CliRunner()
    out = tmp_path / "vis"
    result = runner.invoke(main, ["visualize", str(path), "--dataset", "mnist", "--limit", "200", "--layers", "c3,f6",
                                  "--units", "2", "--top", "3", "--steps", "20", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "visualize.json").read_text())
    assert report["layers"]["c3"]["receptive_field"]["size"] == [14, 14]
    assert report["layers"]["f6"]["receptive_field"]["spatial"] is False
    assert len(report["layers"]["c3"]["units"][1]["top"]) == 3
    assert (out / "layer-c3.png").read_bytes()[:4] == b"\x89PNG" and (out / "layer-f6.png").is_file()

    bad = runner.invoke(main, ["visualize", str(path), "--dataset", "mnist", "--layers", "conv9", "--top", "0",
                               "--out", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "c1, s2, c3" in bad.output and "Traceback" not in bad.output
    flat = runner.invoke(main, ["visualize", str(path), "--dataset", "mnist", "--layers", "f6", "--crop",
                                "--out", str(tmp_path / "bad")])
    assert flat.exit_code == 2 and "no spatial axes" in flat.output
    assert not (tmp_path / "bad").exists()
