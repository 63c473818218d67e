"""A matrix of bad input across the commands: each row is a command line (or a spec fragment) and must end in
exit code 2, one paragraph naming what was expected and what was received, no traceback, and no new or
changed files.

Rows fail while the input is checked, before any training or attack, so the
matrix runs in seconds after two small fixtures: a real `robust train` folder
(an MLP trained for one epoch on 100 MNIST images) and, for `robust report`,
a real tiny run folder (marked slow). Placeholders in a row: {model} (the train
folder), {keras} (its model.keras copied alone: no card), {nocard} (a folder
with model.keras but no model.json), {tmp} (the row's own folder, also the
current folder), {ro} (a folder no file can be created in), {spec} (the row's
spec written to a file), {run} (a copy of the tiny run folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from robust.cli import main

SPEC = """
name = "bad"
[data]
dataset = "mnist"
train_limit = 100
test_limit = 20
[training]
epochs = 1
"""
MLP = '[[models]]\nname = "mlp"\nlabel = "MLP"\noptions = { width = 8 }\n'
OK_SPEC = SPEC + MLP


def row(cmd: str, *expect: str, spec: str | None = None, setup=None, slow: bool = False, id: str | None = None):
    """One case: the command line (split on spaces), the substrings the message must hold (what was expected,
    what was received), an optional spec text for {spec} and a setup(tmp) that prepares input files."""
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(cmd, expect, spec, setup, marks=marks, id=id or f"{cmd} -> {expect[0]}"[:90])


def labels_npz(y_train, y_test=None, x_shape=(28, 28, 1), pixels=None):
    def setup(tmp: Path, places: dict):
        n = len(y_train)
        x = np.zeros((n, *x_shape), np.uint8) if pixels is None else pixels
        np.savez(tmp / "data.npz", x_train=x, y_train=np.asarray(y_train),
                 x_test=x, y_test=np.asarray(y_train if y_test is None else y_test))
    return setup


def write(name: str, content: str | bytes):
    def setup(tmp: Path, places: dict):
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def edit_results(change):
    def setup(tmp: Path, places: dict):
        path = tmp / "run" / "results.json"
        results = json.loads(path.read_text())
        path.write_text(json.dumps(change(results)))
    return setup


def edit_arrays(change):
    def setup(tmp: Path, places: dict):
        path = tmp / "run" / "arrays" / "mlp.npz"
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        change(arrays)
        np.savez(path, **arrays)
    return setup


def model_with_card(**changes):
    """{tmp}/m: a copy of the trained folder whose card has ``changes``."""
    def setup(tmp: Path, places: dict):
        shutil.copytree(places["model"], tmp / "m")
        card = json.loads((tmp / "m" / "model.json").read_text())
        (tmp / "m" / "model.json").write_text(json.dumps({**card, **changes}))
    setup.needs_model = True
    return setup


def keras_file(name: str, build):
    """{tmp}/NAME: a .keras file of the model ``build()`` returns (after it runs, if it returns a callable)."""
    def setup(tmp: Path, places: dict):
        import keras

        made = build(keras)
        model, after = made if isinstance(made, tuple) else (made, None)
        model.save(tmp / name)
        if after is not None:
            after()
    return setup


def _two_outputs(keras):
    image = keras.Input((28, 28, 1))
    flat = keras.layers.Flatten()(image)
    return keras.Model(image, [keras.layers.Dense(10)(flat), keras.layers.Dense(1)(flat)])


def _custom_layer(keras):
    """A model with a registered custom layer, saved, then unregistered: as in a process that never imported it."""
    @keras.saving.register_keras_serializable(package="acme_bad_input")
    class Twice(keras.layers.Layer):
        def call(self, x):
            return x * 2

    image = keras.Input((28, 28, 1))
    model = keras.Model(image, keras.layers.Dense(10)(keras.layers.Flatten()(Twice()(image))))
    return model, lambda: keras.saving.get_custom_objects().pop("acme_bad_input>Twice")


def _rescaled(keras):
    image = keras.Input((28, 28, 1))
    return keras.Model(image, keras.layers.Dense(10)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(image))))


def _set(results, path, value):
    target = results
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return results


TRAIN = [
    row("train resnet50 --dataset mnist", "Unknown model 'resnet50'", "Known models"),
    row("train lenet5", "needs --dataset NAME"),
    row("train lenet5 --dataset imagenet", "Unknown dataset 'imagenet'", "Known datasets"),
    row("train lenet5 --dataset mnist --data {tmp}/none.npz", "no such file or folder", "none.npz"),
    row("train lenet5 --dataset mnist --epochs 0", "Invalid value for '--epochs'", "0 is not in the range"),
    row("train lenet5 --dataset mnist --epochs ten", "Invalid value for '--epochs'", "'ten' is not a valid integer"),
    row("train lenet5 --dataset mnist --batch-size 0", "Invalid value for '--batch-size'", "0 is not in the range"),
    row("train lenet5 --dataset mnist --lr -0.1", "Invalid value for '--lr'", "-0.1 is not in the range"),
    row("train lenet5 --dataset mnist --limit 0", "Invalid value for '--limit'", "0 is not in the range"),
    row("train lenet5 --dataset mnist --seed -1", "Invalid value for '--seed'", "-1 is not in the range"),
    row("train lenet5 --dataset mnist --seed 4294967296", "Invalid value for '--seed'", "4294967296"),
    row("train lenet5 --dataset mnist --option width", "--option expects KEY=VALUE", "received 'width'"),
    row("train lenet5 --dataset mnist --option width=2", "has no option 'width'", "Its options are"),
    row("train mlp --dataset mnist --option width=abc", "option width must be an integer", "received 'abc'"),
    row("train mlp --dataset mnist --option dropout=2", "option dropout must be a number in [0, 1)", "received 2"),
    row("train mlp --dataset mnist --option dropout=nan", "option dropout must be a number", "received nan"),
    row("train lenet5 --dataset mnist --option activation=foo", "option activation must be one of 'relu'",
        "received 'foo'"),
    row("train mlp --dataset mnist --option depth=two", "option depth must be an integer", "received 'two'"),
    row("train mlp --dataset mnist --option depth=1.5", "option depth must be an integer", "received 1.5"),
    row("train mlp --dataset mnist --option depth=0", "option depth must be an integer in [1, 64]", "received 0"),
    row("train vgg11 --dataset cifar10 --option batch_norm=maybe", "must be true or false", "received 'maybe'"),
    row("train mlp --dataset mnist --option match=resnet", "option match='resnet'", "Unknown model 'resnet'"),
    row("train mlp --dataset mnist --option width=8 --option width=16", "--option width is given twice",
        "'width=16'"),
    row("train mlp --dataset mnist --option match=lenet5 --option width=8", "width and match exclude each other",
        "received width=8"),
    row("train vgg11 --dataset mnist", "'vgg11' cannot take images of shape 28x28x1", "at least 32"),
    row("train mlp --dataset mnist --out {tmp}/taken", "Invalid value for '--out'", "is a file",
        setup=write("taken", "x")),
    row("train mlp --dataset mnist --out {tmp}/file/sub", "is a file, not a folder", "cannot be created",
        setup=write("file", "x")),
    row("train mlp --dataset mnist --out {ro}/out", "is not writable", "Expected a folder you can write to"),
    row("train mlp --dataset mnist --out {model}", "already holds a mlp model trained on mnist",
        "model.keras, model.json", id="train-refuses-to-overwrite"),
    row("train mlp --dataset mnist --tensorboard {tmp}/tb", "Invalid value for '--tensorboard'", "is a file",
        setup=write("tb", "x")),
    row("train mlp --dataset mnist --data {tmp}/data.npz --out {tmp}/m", "floats that are not whole numbers",
        "integer class labels in [0, 9]", setup=labels_npz(np.arange(20) % 10 / 10), id="train-float-labels"),
    row("train mlp --dataset mnist --data {tmp}/data.npz --out {tmp}/m", "not whole numbers", "e.g. nan",
        setup=labels_npz(np.full(20, np.nan)), id="train-nan-labels"),
    row("train mlp --dataset mnist --data {tmp}/data.npz --out {tmp}/m", "integer class labels in [0, 9]",
        "received labels in [0, 12]", setup=labels_npz(np.arange(20) % 13), id="train-labels-out-of-range"),
    row("train mlp --dataset mnist --data {tmp}/data.npz --out {tmp}/m", "one per image",
        "received 5 labels for 20 images", setup=labels_npz(np.zeros(20, int), np.zeros(5, int)),
        id="train-label-count"),
    row("train mlp --dataset mnist --data {tmp}/data.npz --out {tmp}/m", "is not a .npz dataset file",
        "is text starting with 'x_train,y_train'", setup=write("data.npz", "x_train,y_train\n1,2\n"),
        id="train-text-npz"),
    row("train mlp --dataset mnist --data {tmp}/data.npz --out {tmp}/m", "lacks 'x_test'", "received",
        setup=lambda tmp, places: np.savez(tmp / "data.npz", x_train=np.zeros((2, 28, 28)), y_train=np.zeros(2),
                                   y_test=np.zeros(2)), id="train-npz-missing-key"),
    row("train mlp --dataset mnist --data {tmp}/data.npz --out {tmp}/m", "has images of shape 32x32x3",
        "expected 28x28x1", setup=labels_npz(np.zeros(4, int), x_shape=(32, 32, 3)), id="train-wrong-shape"),
]

ATTACK = [
    row("attack {model} --eps 0.1,,0.2", "expected comma-separated numbers", "item 2 of 3 is empty"),
    row("attack {model} --eps 0.1,", "expected comma-separated numbers", "item 2 of 2 is empty"),
    row("attack {model} --eps abc", "expected comma-separated numbers", "'abc' is not a number"),
    row("attack {model} --eps nan", "expected finite numbers", "received 'nan'"),
    row("attack {model} --attack jsma", "Unknown attack 'jsma'", "Known attacks: 'apgd', 'apgd-t', 'auto', 'cw', 'deepfool'"),
    row("attack {model} --attack cw --norm inf", "CarliniWagnerL2 measures perturbations in L2; received norm L-inf"),
    row("attack {model} --attack pgd --norm 1", "PGD measures perturbations in L-inf and L2; received norm L1"),
    row("attack {model} --attack fmn --save-examples", "--save-examples needs --eps with a minimum-norm attack"),
    row("attack {model} --norm 3", "Unknown norm '3'"),
    row("attack {model} --steps 0", "steps must be at least 1", "0"),
    row("attack {model} --loss hinge", "Unknown loss 'hinge'"),
    row("attack {model} --attack fgsm --steps 5", "Attack 'fgsm' has no parameter 'steps'", "Its parameters are"),
    row("attack {model} --targeted", "--targeted needs --target C"),
    row("attack {model} --target 42 --limit 20", "expects a class index from 0 to 9", "received '42'"),
    row("attack {model} --target banana --limit 20", "expects a class index (0, 1, ...) or a class name",
        "received 'banana'"),
    row("attack {model} --value-range 1,0", "expected LO < HI", "received '1,0'"),
    row("attack {model} --seed -1", "Invalid value for '--seed'", "-1"),
    row("attack {model} --batch-size 0", "Invalid value for '--batch-size'", "0"),
    row("attack {model} --dataset cifar10 --limit 20", "expects images of shape 28x28x1", "32x32x3"),
    row("attack {keras} --limit 20", ".keras file without a model card", "Pass --dataset"),
    row("attack {nocard} --limit 20", "is a folder without model.json", "Pass --dataset"),
    row("attack {tmp}/m --limit 20", "records data_path=7; expected a file or folder path",
        setup=model_with_card(data_path=7), id="attack-card-data-path"),
    row("attack {tmp}/m --limit 20", "trained on --data gone.npz, which no longer exists", "Pass --data PATH",
        setup=model_with_card(data_path="gone.npz"), id="attack-card-data-moved"),
    row("attack {tmp}/m --limit 20", "is not a model card", "received a JSON list",
        setup=write("m/model.json", "[]")),
    row("attack {tmp} --dataset mnist", "is a folder without model.keras", "received a folder holding nothing"),
    row("attack {tmp}/nope.keras --dataset mnist", "No model at", "expected a .keras file"),
    row("attack {tmp}/text.keras --dataset mnist", "is corrupt or truncated", "zip archive",
        setup=write("text.keras", "not a model")),
    row("attack {model} --out {ro}/r.json", "is not writable", "Expected a folder you can write to"),
    row("attack {model} --out {tmp}", "Invalid value for '--out'", "is a directory"),
    row("attack {model} --out /dev/null", "--out /dev/null is not a regular file", "expected the name of a file"),
    # issue 20: the third round
    row("attack {model} --fail-under nan", "Invalid value for '--fail-under'", "expected a finite number",
        id="attack-fail-under-nan"),
    row("attack {model} --fail-under inf", "Invalid value for '--fail-under'", "inf is not in the range"),
    row("attack {model} --step-size nan", "Invalid value for '--step-size'", "expected a finite number"),
    row("attack {model} --steps 3000000000", "Invalid value for '--steps'", "3000000000"),
    row("attack {model} --restarts 99999999999999999999", "Invalid value for '--restarts'", "99999999999999999999"),
    row("attack {model} --limit 20 --out {tmp}/r.json", "--out", "r.json already exists", "Pass --force",
        setup=write("r.json", "{}"), id="attack-out-exists"),
    row("attack {model} --limit 20 --save-examples --out {tmp}/r.json", "r-eps0.1.png already exists",
        "Pass --force", setup=write("r-eps0.1.png", "png"), id="attack-example-png-exists"),
    row("attack {tmp}/m --limit 20", "does not match its card", "records params=5",
        setup=model_with_card(params=5), id="attack-card-params-mismatch"),
    row("attack {tmp}/m --limit 20", "is not the model its card", "SHA-256 000000000000",
        setup=model_with_card(model_sha256="0" * 64), id="attack-card-hash-mismatch"),
    row("attack {tmp}/m --limit 20", "names no dataset", "Pass --dataset",
        setup=model_with_card(dataset=None), id="attack-card-without-dataset"),
    row("attack {tmp}/two.keras --dataset mnist --limit 20", "has 2 outputs", "keras.Model(model.inputs",
        setup=keras_file("two.keras", _two_outputs), id="attack-two-outputs"),
    row("attack {tmp}/custom.keras --dataset mnist --limit 20", "custom Keras class 'Twice'",
        "Could not locate class 'Twice'", setup=keras_file("custom.keras", _custom_layer), id="attack-custom-layer"),
    row("attack {tmp}/r.keras --dataset mnist --value-range 0,1", "Rescaling layer",
        "takes pixels in [0, 255], but --value-range gives [0, 1]", setup=keras_file("r.keras", _rescaled),
        id="attack-value-range-contradicts-rescaling"),
    row("attack {model} --eps 0.1 --attack pgd --steps -5", "steps must be at least 1", "-5"),
]

FOOL = [
    row("fool {model} --classes 42", "--classes expects a class index from 0 to 9", "received '42'"),
    row("fool {model} --classes banana", "class index (0, 1, ...) or a class name", "received 'banana'"),
    row("fool {model} --classes 3,,7", "separated by single commas", "received '3,,7'"),
    row("fool {model} --classes 3,3", "names a class twice", "received '3,3'"),
    row("fool {model} --threshold 1.2", "threshold must be a confidence below 1", "received 1.2"),
    row("fool {model} --seeds 0", "Invalid value for '--seeds'", "0 is not in the range"),
    row("fool {model} --max-steps 0", "max_steps", "0"),
    row("fool {model} --step-size -1", "step_size", "-1"),
    row("fool {model} --jitter -1", "jitter", "-1"),
    row("fool {model} --seed -1", "Invalid value for '--seed'", "-1"),
    row("fool {model} --dataset svhn", "Unknown dataset 'svhn'", "Known datasets"),
    row("fool {model} --out {ro}/f", "is not writable", "Expected a folder you can write to"),
    row("fool {model} --max-steps 3000000000", "Invalid value for '--max-steps'", "3000000000"),
    row("fool {model} --threshold nan", "Invalid value for '--threshold'", "expected a finite number"),
    row("fool {model} --l2-decay inf", "Invalid value for '--l2-decay'", "received 'inf'"),
]

VISUALIZE = [
    row("visualize {model} --steps 3000000000", "Invalid value for '--steps'", "3000000000"),
    row("visualize {model} --steps 0", "Invalid value for '--steps'", "0 is not in the range"),
    row("visualize {model} --units 0", "Invalid value for '--units'", "0 is not in the range"),
    row("visualize {model} --blur-sigma nan", "Invalid value for '--blur-sigma'", "expected a finite number"),
    row("visualize {model} --step-size inf", "Invalid value for '--step-size'", "received 'inf'"),
    row("visualize {model} --layers nosuch --top 0", "nosuch"),
    row("visualize {model} --out {ro}/v --top 0", "is not writable", "Expected a folder you can write to"),
    row("visualize {tmp}/nope.keras", "No model at", "expected a .keras file"),
]

MODELS = [
    row("models --trained {tmp}/none", "Invalid value for '--trained'", "does not exist"),
]

SUMMARY = [
    row("summary resnet --input-shape 28,28,1", "Unknown model 'resnet'", "Known models"),
    row("summary lenet5", "needs the image shape", "--input-shape H,W,C"),
    row("summary lenet5 --input-shape 0,0,1", "expected positive integers", "received '0,0,1'"),
    row("summary lenet5 --input-shape abc", "expected positive integers", "received 'abc'"),
    row("summary lenet5 --dataset mnist --input-shape 28,28,1", "either --dataset or --input-shape"),
    row("summary lenet5 --dataset svhn", "Unknown dataset 'svhn'", "Known datasets"),
    row("summary mlp --dataset mnist --option width=abc", "option width must be an integer", "received 'abc'"),
    row("summary lenet5 --input-shape 28,28,1 --classes 1", "Invalid value for '--classes'", "1"),
    row("summary vgg11 --input-shape 28,28,1", "cannot take images of shape 28x28x1", "at least 32"),
    row("summary lenet5 --input-shape 28,28", "needs images of rank 3", "rank 2"),
    row("summary {model} --classes 5", "--classes and --option apply to zoo models", "Received MODEL="),
    row("summary {tmp}/nope.keras", "No model at", "expected a .keras file"),
]

RUN = [
    row("run {tmp}/nope.toml", "No run spec at", "expected a TOML file"),
    row("run {spec}", "is not valid TOML", spec="name = 'x'\n[[models]\n"),
    row("run {tmp}/latin.toml", "is not UTF-8 text, as TOML must be", "byte 0xe9 at position 9",
        setup=write("latin.toml", "name = 'r\xe9seau'\n".encode("latin-1"))),
    row("run {spec}", "unknown key 'colour' in the top level", "Allowed keys", spec="colour = 1\n" + OK_SPEC),
    row("run {spec}", "has no option 'widht'", "Its options are",
        spec=SPEC + '[[models]]\nname = "mlp"\noptions = { widht = 8 }\n'),
    row("run {spec}", "option width must be an integer", "received -3",
        spec=SPEC + '[[models]]\nname = "mlp"\noptions = { width = -3 }\n'),
    row("run {spec}", "'vgg11' cannot take images of shape 28x28x1", "models[1]",
        spec=OK_SPEC + '[[models]]\nname = "vgg11"\n'),
    row("run {spec}", "eps.values must be a number", "received nan", spec=OK_SPEC + "[eps]\nvalues = [0.1, nan]\n"),
    row("run {spec}", "fooling.classes must be distinct class indices in [0, 9]", "received [42]",
        spec=OK_SPEC + "[fooling]\nclasses = [42]\n"),
    row("run {spec}", "has the label 'MLP', which models[0] already has", "give each its own label",
        spec=OK_SPEC + '[[models]]\nname = "lenet5"\nlabel = "MLP"\n'),
    row("run {spec}", "has the label '感知器', which models[0] already has",
        spec=SPEC + '[[models]]\nname = "mlp"\nlabel = "感知器"\n'
        '[[models]]\nname = "lenet5"\nlabel = "感知器"\n'),
    row("run {spec}", "repeats model 'mlp' with the same options as models[0]",
        spec=SPEC + '[[models]]\nname = "mlp"\n[[models]]\nname = "mlp"\n'),
    row("run {spec}", "Unknown attack 'jsma'", "Known attacks", spec=OK_SPEC + '[[attacks]]\nname = "jsma"\n'),
    row("run {spec}", "attacks[0]", "steps", spec=OK_SPEC + '[[attacks]]\nname = "pgd"\nsteps = 0\n'),
    row("run {spec}", "attacks[0].random_start must be true or false", "received 'yes'",
        spec=OK_SPEC + '[[attacks]]\nname = "pgd"\nrandom_start = "yes"\n'),
    row("run {spec}", "sets targeted = true, but a run spec has no target class",
        spec=OK_SPEC + '[[attacks]]\nname = "pgd"\ntargeted = true\n'),
    row("run {spec}", "eps.values must be numbers in [0, 1]", "received [0.1, 2.0]",
        spec=OK_SPEC + "[eps]\nvalues = [0.1, 2.0]\n"),
    row("run {spec}", "fooling.threshold must be a probability", "received 1.5",
        spec=OK_SPEC + "[fooling]\nthreshold = 1.5\n"),
    row("run {spec}", "step_size must be a number", "received 'abc'",
        spec=OK_SPEC + "[fooling]\nstep_size = 'abc'\n"),
    row("run {spec}", "report.examples must be an integer >= 1", "received 0",
        spec=OK_SPEC + "[report]\nexamples = 0\n"),
    row("run {spec}", "training.lr must be a number", "received nan", spec=SPEC.replace(
        "epochs = 1", "epochs = 1\nlr = nan") + MLP),
    row("run {spec}", "seed must be an integer in [0, 4294967295]", "received -1", spec="seed = -1\n" + OK_SPEC),
    row("run {spec}", "name must be a name of letters", "received 'a/b'", spec=OK_SPEC.replace('"bad"', '"a/b"')),
    row("run {spec}", "data.path must be an existing .npz file", "received 'nowhere.npz'",
        spec=OK_SPEC.replace('dataset = "mnist"', 'dataset = "mnist"\npath = "nowhere.npz"')),
    row("run {spec}", "is a ready model (ref)", "received 'options'",
        spec=SPEC + '[[models]]\nref = "m.keras"\noptions = { width = 8 }\n'),
    row("run {spec}", "either name (a zoo model to train) or ref", "received",
        spec=SPEC + '[[models]]\nname = "mlp"\nref = "m.keras"\n'),
    row("run {spec}", "models[1] (ref", "takes images of shape 28x28x1 but cifar10 images are 32x32x3",
        spec=SPEC.replace('"mnist"', '"cifar10"') + MLP + '[[models]]\nref = "{model}"\n', id="run-ref-checked-first"),
    row("run {spec} --resume --force", "--resume and --force contradict each other", spec=OK_SPEC),
    # the adversarial table of a [[models]] entry (issue 8), checked as `robust train --adversarial` is
    row("run {spec}", "models[1].adversarial: eps must be greater than 0", "received 0",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "pgd", eps = 0 }\n'),
    row("run {spec}", "models[1].adversarial: eps=1.5 is larger than any L-inf distance", "[0, 1]",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "pgd", eps = 1.5 }\n'),
    row("run {spec}", "Unknown adversarial training method 'pgdx'", "Known methods",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "pgdx", eps = 0.1 }\n'),
    row("run {spec}", "models[1].adversarial: steps must be at least 1", "received 0",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "pgd", eps = 0.1, steps = 0 }\n'),
    row("run {spec}", "models[1].adversarial: beta must be 0 or more", "received -1",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "trades", eps = 0.1, beta = -1 }\n'),
    row("run {spec}", "unknown key 'epsilon' in models[1].adversarial", "Allowed keys",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "pgd", epsilon = 0.1, eps = 0.1 }\n'),
    row("run {spec}", "models[1].adversarial must be a table with at least method and eps", "received 'pgd'",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = "pgd"\n'),
    row("run {spec}", "warmup=1 must be shorter than training", "1 epochs",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "pgd", eps = 0.1, warmup = 1 }\n'),
    row("run {spec}", "is a ready model (ref)", "received 'adversarial'",
        spec=SPEC + '[[models]]\nref = "m.keras"\nadversarial = { method = "pgd", eps = 0.1 }\n'),
    row("run {spec} --resume --out {tmp}/never", "--resume continues an interrupted run", "does not exist",
        spec=OK_SPEC),
    row("run {spec} --out {ro}/out", "is not writable", "Expected a folder you can write to", spec=OK_SPEC),
    # issue 20: checked before any training
    row("run {spec}", "report.saliency must be an integer >= 1", "received 0",
        spec=OK_SPEC + "[report]\nsaliency = 0\n"),
    row("run {spec}", "report.example_eps must be a number in [0, 1]", "received 5.0",
        spec=OK_SPEC + "[report]\nexample_eps = 5.0\n"),
    row("run {spec}", "report.example_eps must be a number", "received nan",
        spec=OK_SPEC + "[report]\nexample_eps = nan\n"),
    row("run {spec}", "attacks[0]: steps must be a finite integer", "received inf",
        spec=OK_SPEC + '[[attacks]]\nname = "pgd"\nsteps = inf\n'),
    row("run {spec}", "attacks[0]: steps must be a finite integer", "received nan",
        spec=OK_SPEC + '[[attacks]]\nname = "pgd"\nsteps = nan\n'),
    row("run {spec}", "attacks[0]: steps must be at most 10,000,000", "received 3000000000",
        spec=OK_SPEC + '[[attacks]]\nname = "pgd"\nsteps = 3000000000\n'),
    row("run {spec}", "training.epochs must be an integer >= 1", "received inf",
        spec=SPEC.replace("epochs = 1", "epochs = inf") + MLP),
    row("run {spec}", "training.epochs must be an integer of at most 10,000,000", "received 99999999999",
        spec=SPEC.replace("epochs = 1", "epochs = 99999999999") + MLP),
    row("run {spec}", "fooling.max_steps must be an integer >= 1", "received nan",
        spec=OK_SPEC + "[fooling]\nmax_steps = nan\n"),
    row("run {spec}", "models[1].adversarial: steps must be a finite integer", "received inf",
        spec=OK_SPEC + '[[models]]\nname = "mlp"\nadversarial = { method = "pgd", eps = 0.1, steps = inf }\n'),
    row("run {spec}", "data.test_limit must be an integer >= 1", "received 0",
        spec=OK_SPEC.replace("test_limit = 20", "test_limit = 0")),
]

REPORT = [
    row("report {tmp}", "has no results.json", "Expected a folder written by `robust run`"),
    row("report {tmp}", "is not valid JSON", setup=write("results.json", "{not json")),
    row("report {run}", "must hold a JSON object", "received a list", setup=edit_results(lambda r: [r]),
        slow=True, id="report-results-is-a-list"),
    row("report {run}", "models must be present", "received nothing (the key is missing)", slow=True,
        setup=edit_results(lambda r: {k: v for k, v in r.items() if k != "models"}), id="report-no-models"),
    row("report {run}", "models['mlp'].test_accuracy must be a number in [0, 1]", "received 'high'", slow=True,
        setup=edit_results(lambda r: _set(r, ["models", "mlp", "test_accuracy"], "high")), id="report-string"),
    row("report {run}", "records[0].eps must be a number", "received null", slow=True,
        setup=edit_results(lambda r: _set(r, ["records", 0, "eps"], None)), id="report-null-eps"),
    row("report {run}", "has schema 'robust.results/0'", "renders 'robust.results/1'", slow=True,
        setup=edit_results(lambda r: _set(r, ["schema"], "robust.results/0")), id="report-old-schema"),
    row("report {run}", "records[0].model must be the key of a model", "received 'ghost'", slow=True,
        setup=edit_results(lambda r: _set(r, ["records", 0, "model"], "ghost")), id="report-unknown-model"),
    row("report {run}", "arrays must be a .npz path inside the run folder", "received '../x.npz'", slow=True,
        setup=edit_results(lambda r: _set(r, ["models", "mlp", "arrays"], "../x.npz")), id="report-escape"),
    row("report {run}", "is not a .npz arrays file", "is text starting with 'junk'", slow=True,
        setup=write("run/arrays/mlp.npz", "junk"), id="report-junk-npz"),
    row("report {run}", "array 'saliency' must have 3 or 4 dimensions", "received nothing", slow=True,
        setup=edit_arrays(lambda a: a.pop("saliency")), id="report-npz-missing-array"),
    row("report {run}", "example_adv_pred must hold class indices in [0, 9]", "received values in", slow=True,
        setup=edit_arrays(lambda a: a.__setitem__("example_adv_pred", a["example_adv_pred"] + 50)),
        id="report-npz-bad-class"),
    row("report {run}", "the figures folder", "is a file; expected a folder", slow=True, id="report-figures-is-a-file",
        setup=lambda tmp, places: shutil.rmtree(tmp / "run" / "figures") or write("run/figures", "x")(tmp, places)),
    row("report {run}", "arrays/mlp.npz is missing", "results.json names it", slow=True,
        setup=lambda tmp, places: (tmp / "run" / "arrays" / "mlp.npz").unlink(), id="report-npz-gone"),
]

EVAL = [
    row("eval {model} --resume --force", "--resume and --force contradict each other"),
    row("eval {model} --attacks fgsm,jsma", "Unknown attack 'jsma'", "Known attacks: 'apgd', 'apgd-t', 'auto', 'cw'"),
    row("eval {model} --attacks ,", "expects registered attacks separated by single commas", "received ','"),
    row("eval {model} --attacks fgsm,fgsm", "names an attack twice", "received 'fgsm,fgsm'"),
    row("eval {model} --attacks fgsm --steps 5", "--steps applies to attacks that iterate", "none of fgsm"),
    row("eval {tmp}/nope.keras", "No model at", "expected a .keras file"),
    row("eval nosuchmodule_xyz:make", "there is no module 'nosuchmodule_xyz'", "Expected module.path:factory"),
    row("eval {model} --dataset svhn", "Unknown dataset 'svhn'", "Known datasets"),
    row("eval {model} --dataset cifar10", "takes images of shape 28x28x1", "cifar10 images are 32x32x3"),
    row("eval {model} --value-range 1,0", "expected LO < HI", "received '1,0'"),
    row("eval {model} --eps 0,,0.1", "expected comma-separated numbers", "item 2 of 3 is empty"),
    row("eval {model} --resume --out {tmp}/never", "--resume continues an interrupted run", "does not exist"),
    row("eval {model} --out {ro}/out", "is not writable", "Expected a folder you can write to"),
    row("eval {model} --data {tmp}/none.npz", "no such file or folder", "none.npz"),
    row("eval {model} --steps 0", "Invalid value for '--steps'", "0 is not in the range"),
    row("eval {model} --fail-under nan", "Invalid value for '--fail-under'", "expected a finite number"),
    row("eval {model} --steps 3000000000", "Invalid value for '--steps'", "3000000000"),
    row("eval {tmp}/m", "does not match its card", "records params=5", setup=model_with_card(params=5),
        id="eval-card-params-mismatch"),
    row("eval {tmp}/two.keras --dataset mnist", "has 2 outputs", setup=keras_file("two.keras", _two_outputs),
        id="eval-two-outputs"),
    row("eval {tmp}/custom.keras --dataset mnist", "custom Keras class 'Twice'",
        setup=keras_file("custom.keras", _custom_layer), id="eval-custom-layer"),
    row("eval {tmp}/r.keras --dataset mnist --value-range 0,1", "takes pixels in [0, 255]",
        setup=keras_file("r.keras", _rescaled), id="eval-value-range-contradicts-rescaling"),
]

MATRIX = TRAIN + ATTACK + FOOL + VISUALIZE + MODELS + SUMMARY + RUN + REPORT + EVAL


@pytest.fixture(scope="module")
def trained(data_dir, tmp_path_factory) -> dict[str, Path]:
    """A real `robust train` folder, its model alone as a .keras file, and a folder without a card."""
    root = tmp_path_factory.mktemp("trained")
    res = CliRunner().invoke(main, ["train", "mlp", "--dataset", "mnist", "--limit", "100", "--epochs", "1",
                                    "--option", "width=8", "--out", str(root / "mlp"), "--no-progress"])
    assert res.exit_code == 0, res.output
    shutil.copy(root / "mlp" / "model.keras", root / "alone.keras")
    (root / "nocard").mkdir()
    shutil.copy(root / "mlp" / "model.keras", root / "nocard" / "model.keras")
    return {"model": root / "mlp", "keras": root / "alone.keras", "nocard": root / "nocard"}


@pytest.fixture(scope="module")
def run_folder(data_dir, tmp_path_factory) -> Path:
    """A real, finished tiny run (an MLP, FGSM at two eps, two fooling classes) with its report."""
    root = tmp_path_factory.mktemp("study")
    spec = root / "tiny.toml"
    spec.write_text(OK_SPEC + '[[attacks]]\nname = "fgsm"\n[eps]\nvalues = [0.0, 0.1]\n'
                    "[fooling]\nclasses = [0, 1]\nmax_steps = 5\n[report]\nexamples = 2\nsaliency = 2\n")
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(root / "run"), "--no-progress"])
    assert res.exit_code == 0, res.output
    return root / "run"


@pytest.fixture(scope="module")
def read_only(tmp_path_factory) -> Path:
    """A folder in which no file can be created: a 0o555 folder, or /sys where permissions do not stop root."""
    folder = tmp_path_factory.mktemp("ro")
    folder.chmod(0o555)
    for candidate in (folder, Path("/sys")):
        try:
            (candidate / ".probe").touch()
            (candidate / ".probe").unlink()
        except OSError:
            return candidate
    pytest.skip("no read-only folder to test with (root on a system without a read-only /sys)")


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and folder under the roots with a hash of its content (the run lock's pid is not content)."""
    out = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.name == ".robust.lock":
                continue
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.mark.parametrize("cmd, expect, spec, setup", MATRIX)
def test_bad_input(cmd, expect, spec, setup, request, tmp_path, monkeypatch, read_only):
    monkeypatch.chdir(tmp_path)
    places = {"tmp": str(tmp_path), "ro": str(read_only), "spec": str(tmp_path / "spec.toml")}
    needs_model = any(f"{{{k}}}" in cmd + (spec or "") for k in ("model", "keras", "nocard"))
    if needs_model or getattr(setup, "needs_model", False):
        places.update({k: str(v) for k, v in request.getfixturevalue("trained").items()})
    if "{run}" in cmd:
        shutil.copytree(request.getfixturevalue("run_folder"), tmp_path / "run")
        places["run"] = str(tmp_path / "run")
    if spec is not None:
        for key in ("model", "tmp"):
            spec = spec.replace("{%s}" % key, places.get(key, ""))
        (tmp_path / "spec.toml").write_text(spec, encoding="utf-8")
    if setup is not None:
        setup(tmp_path, places)
    roots = [tmp_path] + [Path(places[k]) for k in ("model", "nocard") if k in places]
    before = snapshot(*roots)

    res = CliRunner().invoke(main, [part.format(**places) for part in cmd.split(" ")])

    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and isinstance(res.exception, SystemExit), res.output
    message = res.output[res.output.index("Error: "):] if "Error: " in res.output else res.output
    for piece in expect:
        assert piece in message, f"{piece!r} not in: {message}"
    assert "\n\n" not in message.strip(), f"more than one paragraph: {message}"
    assert snapshot(*roots) == before, "bad input changed files"


def test_matrix_covers_every_command_and_the_issue():
    commands = {p.values[0].split(" ")[0] for p in MATRIX}
    assert commands == {"train", "attack", "fool", "visualize", "models", "summary", "run", "report", "eval"}
    assert len(MATRIX) >= 120


# -- the mechanisms behind the matrix -----------------------------------------------------------------------

def test_unexpected_error_is_one_paragraph_with_exit_1_and_debug_shows_the_traceback(monkeypatch):
    import importlib

    registry = importlib.import_module("robust.models.registry")  # the module; robust.models.registry is a function

    def broken():
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(registry, "entries", broken)
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit)
    assert "robust models stopped on an unexpected error (ZeroDivisionError: division by zero)" in res.output
    assert "Rerun with `robust --debug models ...`" in res.output and "Traceback" not in res.output
    assert "\n\n" not in res.output.strip()
    res = CliRunner().invoke(main, ["--debug", "models"])
    assert res.exit_code == 1 and "Traceback (most recent call last)" in res.output
    assert "ZeroDivisionError" in res.output


def test_a_file_system_refusal_anywhere_is_exit_2_naming_the_path(monkeypatch):
    import importlib

    registry = importlib.import_module("robust.models.registry")

    def refused():
        raise PermissionError(13, "Permission denied", "/srv/plugins/robust_models.pth")

    monkeypatch.setattr(registry, "entries", refused)
    res = CliRunner().invoke(main, ["models"])
    assert res.exit_code == 2 and "Cannot use /srv/plugins/robust_models.pth: Permission denied" in res.output


def test_a_failed_write_is_named_and_leaves_the_old_file(tmp_path, monkeypatch):
    import errno

    import robust.artifacts as artifacts

    target = tmp_path / "results.json"
    target.write_text("old")

    def full(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(dst))

    monkeypatch.setattr(artifacts.os, "replace", full)
    with pytest.raises(artifacts.RobustError, match=r"Could not write .*results.json: No space left on device "
                                                    r"\(ENOSPC\).*nothing was half-written"):
        artifacts.write_json(target, {"new": 1})
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_full_disk_is_refused_before_the_work(tmp_path, monkeypatch):
    import robust.artifacts as artifacts

    real = os.statvfs

    class Full:
        def __init__(self, path):
            stat = real(path)
            self.f_frsize, self.f_bavail = stat.f_frsize, 0

    monkeypatch.setattr(artifacts.os, "statvfs", Full)
    with pytest.raises(artifacts.RobustError, match=r"--out .*out is on a full disk: 0 bytes free"):
        artifacts.check_writable(tmp_path / "out", what="--out")
    assert list(tmp_path.iterdir()) == []


def test_all_or_nothing_replaces_every_file_or_none(tmp_path):
    from robust.artifacts import all_or_nothing, pending, write_text

    for name in ("a.txt", "b.txt"):
        (tmp_path / name).write_text("old")
    with pytest.raises(RuntimeError):
        with all_or_nothing():
            write_text(tmp_path / "a.txt", "new")
            assert pending(tmp_path / "a.txt").read_text() == "new"  # readable before it lands
            assert (tmp_path / "a.txt").read_text() == "old"
            raise RuntimeError("the second figure failed")
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["old", "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    with all_or_nothing():
        write_text(tmp_path / "a.txt", "new")
        write_text(tmp_path / "b.txt", "new")
    assert [(tmp_path / n).read_text() for n in ("a.txt", "b.txt")] == ["new", "new"]


def test_attack_whose_results_cannot_be_written_exits_2_and_writes_nothing(trained, tmp_path, monkeypatch):
    import errno

    import robust.artifacts as artifacts

    real = artifacts.os.replace

    def full_for_json(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", full_for_json)
    out = tmp_path / "r.json"
    res = CliRunner().invoke(main, ["attack", str(trained["model"]), "--attack", "fgsm", "--eps", "0.1", "--limit",
                                    "20", "--out", str(out), "--no-progress"])
    assert res.exit_code == 2, res.output
    assert "No space left on device" in res.output and "Traceback" not in res.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_report_that_fails_half_way_leaves_figures_and_report_matching(run_folder, tmp_path, monkeypatch):
    import robust.report.figures as figures

    run = tmp_path / "run"
    shutil.copytree(run_folder, run)
    before = snapshot(run)

    def broken(*args, **kwargs):
        raise RuntimeError("matplotlib ran out of colours")

    monkeypatch.setattr(figures, "saliency_grid", broken)  # after the curves and example grids are drawn
    res = CliRunner().invoke(main, ["report", str(run)])
    assert res.exit_code == 1 and "unexpected error (RuntimeError: matplotlib ran out of colours)" in res.output
    assert snapshot(run) == before
