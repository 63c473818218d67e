"""Run specs: the shipped ones parse, and every mistake is named."""

from __future__ import annotations

import pytest

from robust import RobustError
from robust.spec import load_spec, parse_spec

MINIMAL = """
name = "tiny"
[[models]]
name = "lenet5"
"""


def test_builtin_default_spec_is_the_documented_study():
    spec = load_spec(None)
    assert spec.name == "mnist" and spec.dataset == "mnist"
    assert [m.name for m in spec.models] == ["lenet5", "mlp", "mlp"]
    assert spec.models[2].options == {"match": "lenet5"}
    assert [a.name for a in spec.attacks] == ["fgsm", "pgd"]
    assert all(a.params.get("norm", "inf") == "inf" for a in spec.attacks)
    assert spec.eps == (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)
    assert spec.fooling["classes"] == "all"
    assert len({m.key for m in spec.models}) == 3


def test_cifar_spec_parses():
    spec = load_spec("cifar10")
    assert spec.dataset == "cifar10" and spec.models[0].name == "vgg11"


def test_defaults_fill_in():
    spec = parse_spec(MINIMAL)
    assert spec.seed == 0 and spec.test_limit == 1000 and spec.models[0].epochs == 5
    assert spec.report["example_eps"] in spec.eps


@pytest.mark.parametrize("text, message", [
    ("name = 'x'\n[[models]]\nname = 'resnet'", r"Unknown model 'resnet'"),
    ("name = 'x'", r"\[\[models\]\] must be at least one model"),
    (MINIMAL + "[training]\nepochs = 0", r"training.epochs must be an integer >= 1; received 0"),
    (MINIMAL + "[training]\nepoch = 3", r"unknown key 'epoch' in \[training\]"),
    (MINIMAL + "[eps]\nvalues = [0.1, 2.0]", r"eps.values must be numbers in \[0, 1\]"),
    (MINIMAL + "[eps]\nvalues = [-0.1]", r"eps.values must be a number >= 0"),
    (MINIMAL + "[data]\ndataset = 'svhn'", r"data.dataset must be one of"),
    (MINIMAL + "[fooling]\nthreshold = 1.5", r"fooling.threshold must be a probability"),
    (MINIMAL + "[[attacks]]\nname = 'deepfool'", r"attacks\[0\].*Unknown attack 'deepfool'"),
    (MINIMAL + "[[attacks]]\nname = 'pgd'\neps = 0.1", r"the eps grid is shared"),
    (MINIMAL + "[[attacks]]\nname = 'pgd'\nsteps = 0", r"attacks\[0\]"),
    ("name = 'a b'\n[[models]]\nname = 'lenet5'", r"name must be a name of letters"),
    ("name = 'x'\n[[models]\n", r"not valid TOML"),
    (MINIMAL + "[[models]]\nname = 'lenet5'", r"repeats model 'lenet5'"),
])
def test_mistakes_are_named(text, message):
    with pytest.raises(RobustError, match=message):
        parse_spec(text, source="t.toml")


def test_missing_spec_file(tmp_path):
    with pytest.raises(RobustError, match="No run spec at .*built-in spec name"):
        load_spec(tmp_path / "nope.toml")
