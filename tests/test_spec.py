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
    assert [a.name for a in spec.attacks] == ["fgsm", "pgd", "auto"]  # auto: the headline, robust accuracy
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
    (MINIMAL + "[[attacks]]\nname = 'jsma'", r"attacks\[0\].*Unknown attack 'jsma'"),
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


def test_spec_values_are_checked_before_anything_runs():
    base = MINIMAL.replace('name = "lenet5"', 'name = "mlp"')
    with pytest.raises(RobustError, match=r"models\[0\] \(on mnist\): Model 'mlp' option width must be an integer "
                                          r"in \[1, 65536\]; received -3"):
        parse_spec(base + "options = { width = -3 }", source="t.toml")
    with pytest.raises(RobustError, match="'vgg11' cannot take images of shape 28x28x1"):
        parse_spec(MINIMAL + "[[models]]\nname = 'vgg11'", source="t.toml")
    with pytest.raises(RobustError, match=r"fooling.classes must be distinct class indices in \[0, 9\]"):
        parse_spec(MINIMAL + "[fooling]\nclasses = [3, 3]", source="t.toml")
    spec = parse_spec(MINIMAL.replace('"lenet5"', '"vgg11"') + "options = { width = 1 }\n[data]\ndataset = 'cifar10'")
    assert spec.models[0].options == {"width": 1.0} and isinstance(spec.models[0].options["width"], float)


def test_model_keys_stay_distinct_and_readable_for_any_label():
    labels = ["多层感知器", "卷积网络", "Réseau", "🙂", "MLP", "mlp", "Mlp!"]
    text = "name = 'x'\n" + "".join(f"[[models]]\nname = 'mlp'\nlabel = '{label}'\noptions = {{ width = {i + 1} }}\n"
                                     for i, label in enumerate(labels))
    keys = [m.key for m in parse_spec(text).models]
    assert keys[:3] == ["多层感知器", "卷积网络", "réseau"]
    assert keys[3] == "mlp"  # nothing readable in the label: the model's name
    assert len(set(keys)) == len(keys) and all(k.startswith("mlp") for k in keys[4:])
    assert all("/" not in k and len(k) <= 57 for k in keys)
    # the keys of the shipped specs did not change (finished runs keep resuming)
    assert [m.key for m in load_spec("mnist").models] == ["lenet-5", "mlp-784-512-512-10", "mlp-matched-to-lenet-5"]


def test_adversarial_table_is_validated_and_names_the_threat_model_in_the_key():
    text = ("name = 'x'\n[training]\nepochs = 3\n"
            "[[models]]\nname = 'lenet5'\n"
            "[[models]]\nname = 'lenet5'\nadversarial = { method = 'pgd', eps = 0.3 }\n"
            "[[models]]\nname = 'lenet5'\nadversarial = { method = 'trades', eps = 1.5, norm = '2', warmup = 2 }\n"
            "[[models]]\nname = 'lenet5'\nlabel = 'Robust LeNet'\nadversarial = { method = 'fgsm-rs', eps = 0.1 }\n"
            "[[models]]\nname = 'lenet5'\nlabel = 'LeNet, pgd eps 0.2'\nadversarial = { method = 'pgd', eps = 0.2 }\n")
    models = parse_spec(text).models
    assert [m.key for m in models] == ["lenet5", "lenet5-pgd-eps-0-3", "lenet5-trades-l2-eps-1-5",
                                       "robust-lenet-fgsm-rs-eps-0-1", "lenet-pgd-eps-0-2"]
    assert models[0].adversarial is None
    # defaults filled in as robust train fills them: PGD-10, TRADES beta 6, fgsm-rs one step
    assert models[1].adversarial == {"method": "pgd", "eps": 0.3, "steps": 10, "step_size": None, "beta": None,
                                     "norm": "inf", "warmup": 0}
    assert models[2].adversarial["beta"] == 6.0 and models[2].adversarial["norm"] == "2"
    assert models[3].adversarial["steps"] == 1
    assert models[1].label == "lenet5 pgd eps 0.3"  # the default label says it too
    # a threat model is part of the spec the run is resumed against
    assert parse_spec(text).to_dict()["models"][1]["adversarial"]["eps"] == 0.3


def test_builtin_adversarial_spec_pairs_convnets_with_matched_mlps():
    spec = load_spec("mnist-adversarial")
    robust = {m.key: m.adversarial for m in spec.models if m.adversarial}
    assert {a["eps"] for a in robust.values()} == {0.1, 0.3}
    assert {m.name for m in spec.models} == {"lenet5", "cnn_wong", "mlp"}
    assert {m.options.get("match") for m in spec.models if m.name == "mlp"} == {"lenet5", "cnn_wong"}
    assert len(spec.models) == 2 * len(robust)  # every robust model has a standard twin
    assert "auto" in [a.name for a in spec.attacks] and {0.1, 0.3} <= set(spec.eps)
