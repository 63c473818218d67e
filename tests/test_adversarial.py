"""Adversarial training (issue 8): the threat-model config, the guard, the zoo's robust-training CNNs, real runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from robust.adversarial import AdversarialConfig, best_epoch, describe_training, overfitting
from robust.cli import main
from robust.errors import RobustError

# ---------------------------------------------------------------- validation


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "pgd", "eps": 0.0}, "greater than 0"),
    ({"method": "pgd", "eps": -0.1}, "greater than 0"),
    ({"method": "pgd", "eps": float("nan")}, "must be a finite number"),
    ({"method": "free", "eps": 0.3}, "Unknown adversarial training method 'free'"),
    ({"method": "pgd", "eps": 0.3, "steps": 0}, "at least 1"),
    ({"method": "pgd", "eps": 0.3, "steps": 2.5}, "must be an integer"),
    ({"method": "fgsm-rs", "eps": 0.3, "steps": 3}, "exactly one step"),
    ({"method": "trades", "eps": 0.3, "beta": -1.0}, "0 or more"),
    ({"method": "pgd", "eps": 0.3, "beta": 6.0}, "trades only"),
    ({"method": "pgd", "eps": 0.3, "norm": "1"}, "norm"),
    ({"method": "pgd", "eps": 0.3, "warmup": -1}, "0 or more epochs"),
    ({"method": "pgd", "eps": 0.3, "step_size": 0}, "greater than 0"),
])
def test_bad_configs_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(RobustError, match=message):
        AdversarialConfig(**kwargs)


def test_defaults_and_the_value_range_check():
    pgd = AdversarialConfig("pgd", 0.3)
    assert (pgd.steps, pgd.beta, pgd.norm) == (10, None, "inf")
    assert pgd.effective_step_size == pytest.approx(2.5 * 0.3 / 10)
    assert AdversarialConfig("fgsm-rs", 0.3).effective_step_size == pytest.approx(0.375)  # 1.25 x eps
    assert AdversarialConfig("trades", 0.3).beta == 6.0
    with pytest.raises(RobustError, match="larger than any L-inf distance"):
        AdversarialConfig("pgd", 1.5).check_for((28, 28, 1), (0.0, 1.0), epochs=2)
    AdversarialConfig("pgd", 8.0, norm="2").check_for((28, 28, 1), (0.0, 1.0), epochs=2)  # L2 allows 28
    with pytest.raises(RobustError, match="shorter than training"):
        AdversarialConfig("pgd", 0.3, warmup=2).check_for((28, 28, 1), (0.0, 1.0), epochs=2)


# ----------------------------------------------------- the guard, on recorded histories

# What catastrophic overfitting looks like (Wong et al. 2020, fig. 2): PGD accuracy climbs, then
# drops to near zero within one epoch while FGSM accuracy jumps up.
COLLAPSE = {"clean": [0.95, 0.97, 0.98, 0.99], "pgd": [0.60, 0.78, 0.81, 0.03], "fgsm": [0.70, 0.85, 0.88, 0.97]}
HEALTHY = {"clean": [0.95, 0.97, 0.98, 0.985], "pgd": [0.60, 0.78, 0.81, 0.79], "fgsm": [0.70, 0.85, 0.88, 0.89]}


def test_guard_fires_on_a_collapse_and_names_the_kept_epoch():
    warning = overfitting(COLLAPSE)
    assert warning is not None
    assert "catastrophic overfitting at epoch 4" in warning and "0.810 to 0.030" in warning
    assert "keeps epoch 3" in warning
    # every prefix before the collapse is quiet
    for n in range(1, 4):
        assert overfitting({k: v[:n] for k, v in COLLAPSE.items()}) is None


def test_guard_is_quiet_on_noise_and_on_a_general_drop():
    assert overfitting(HEALTHY) is None
    # Both accuracies fall together (a bad learning rate, not catastrophic overfitting).
    assert overfitting({"clean": [0.9, 0.5], "pgd": [0.7, 0.2], "fgsm": [0.8, 0.3]}) is None


def test_best_epoch_is_chosen_by_pgd_accuracy_not_clean():
    assert best_epoch(COLLAPSE) == 2  # clean accuracy is best at epoch 3 (0-based), PGD at epoch 2
    assert best_epoch({"clean": [0.9, 0.95], "pgd": [0.5, 0.5], "fgsm": [0, 0]}) == 1  # tie -> higher clean
    with pytest.raises(RobustError, match="empty"):
        best_epoch({"clean": [], "pgd": [], "fgsm": []})


# ------------------------------------------------------------------ the zoo


def test_robust_training_cnns_counted_by_hand():
    res = CliRunner().invoke(main, ["summary", "cnn_wong", "--dataset", "mnist", "--json"])
    assert res.exit_code == 0, res.output
    # Wong et al.: conv 16@4x4/2 (pad 1): 28 -> 14; conv 32@4x4/2: 14 -> 7; fc 100; out 10.
    wong = (4 * 4 * 1 * 16 + 16) + (4 * 4 * 16 * 32 + 32) + (7 * 7 * 32 * 100 + 100) + (100 * 10 + 10)
    summary = json.loads(res.stdout)
    assert summary["totals"]["params"] == wong == 166_406
    assert [r["output_shape"] for r in summary["rows"] if r["name"] in ("conv1", "conv2")] == [[14, 14, 16],
                                                                                                [7, 7, 32]]
    res = CliRunner().invoke(main, ["summary", "cnn_madry", "--dataset", "mnist", "--json"])
    assert res.exit_code == 0, res.output
    # Madry et al.: conv 32@5x5 same, pool -> 14, conv 64@5x5 same, pool -> 7, fc 1024, out 10.
    madry = (5 * 5 * 1 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (7 * 7 * 64 * 1024 + 1024) + (1024 * 10 + 10)
    assert json.loads(res.stdout)["totals"]["params"] == madry == 3_274_634


# ------------------------------------------------------------------- the CLI


@pytest.mark.parametrize("args, message", [
    (["--adv-eps", "0.3"], "need --adversarial"),
    (["--adv-steps", "5", "--adv-warmup", "1"], "--adv-steps, --adv-warmup configure adversarial training"),
    (["--adversarial", "pgd"], "needs --adv-eps"),
    (["--adversarial", "pgd", "--adv-eps", "0"], "greater than 0"),
    (["--adversarial", "pgd", "--adv-eps", "1.5"], "larger than any L-inf distance"),
    (["--adversarial", "fgsm", "--adv-eps", "0.3"], "Invalid value for '--adversarial'"),
    (["--adversarial", "pgd", "--adv-eps", "0.3", "--adv-steps", "0"], "at least 1"),
    (["--adversarial", "trades", "--adv-eps", "0.3", "--adv-beta", "-1"], "0 or more"),
])
def test_cli_bad_adversarial_options_exit_2_and_write_nothing(data_dir, tmp_path, args, message):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "cnn_wong", "--dataset", "mnist", "--limit", "200", "--epochs", "1",
                                    "--out", str(out), "--no-progress", *args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert not out.exists()


# ----------------------------------------------------------- real training runs


def _pgd_accuracy(model, x, y, eps):
    from robust.attacks import PGD

    return PGD(eps=eps, steps=20, seed=1)(model, x, y, progress=False).adversarial_accuracy


@pytest.mark.slow
def test_adversarial_training_raises_pgd_accuracy_well_above_standard(mnist, mnist_test_batch):
    from robust.training import train

    small = mnist.limited(3000, seed=0)
    x, y = mnist_test_batch
    config = AdversarialConfig("pgd", 0.1, steps=5)
    robust_run = train("cnn_wong", small, epochs=2, batch_size=64, lr=2e-3, seed=0, progress=False,
                       adversarial=config)
    standard = train("cnn_wong", small, epochs=2, batch_size=64, lr=2e-3, seed=0, progress=False)
    robust_acc, standard_acc = _pgd_accuracy(robust_run.model, x, y, 0.1), _pgd_accuracy(standard.model, x, y, 0.1)
    print(f"PGD-20 accuracy at eps 0.1: adversarial {robust_acc:.3f}, standard {standard_acc:.3f}")
    assert robust_acc > standard_acc + 0.2
    assert robust_run.card["test_accuracy"] > 0.8

    card = robust_run.card["adversarial"]
    assert {k: card[k] for k in ("method", "norm", "eps", "steps", "beta")} == {
        "method": "pgd", "norm": "inf", "eps": 0.1, "steps": 5, "beta": None}
    assert card["step_size"] == pytest.approx(0.05)
    assert [e["epoch"] for e in card["epochs"]] == [1, 2]
    for e in card["epochs"]:
        assert 0 <= e["pgd_val_accuracy"] <= e["fgsm_val_accuracy"] + 0.05 and 0 < e["clean_val_accuracy"] <= 1
        assert e["seconds"] > 0 and e["ratio_to_standard"] > 1
    assert card["best_epoch"] == 1 + int(np.argmax([e["pgd_val_accuracy"] for e in card["epochs"]]))
    assert card["validation"]["images"] == 300  # the whole held-out tenth of 3000 (fewer than 500)
    assert card["stopped"] is None and standard.card["adversarial"] is None
    assert describe_training(standard.card).startswith("standard")
    assert describe_training(robust_run.card).startswith("adversarial, pgd at L-inf eps 0.1 (5 step(s) of 0.05)")


@pytest.mark.slow
def test_cli_trades_with_warmup_writes_the_threat_model(data_dir, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["train", "cnn_wong", "--dataset", "mnist", "--limit", "600", "--epochs", "2",
                                    "--out", str(out), "--no-progress", "--adversarial", "trades",
                                    "--adv-eps", "0.2", "--adv-steps", "3", "--adv-beta", "3", "--adv-warmup", "1"])
    assert res.exit_code == 0, res.output
    assert "PGD-10" in res.stderr
    card = json.loads((out / "model.json").read_text())["adversarial"]
    assert (card["method"], card["eps"], card["steps"], card["beta"], card["warmup_epochs"]) == (
        "trades", 0.2, 3, 3.0, 1)
    assert len(card["epochs"]) == 2 and card["standard_epoch_seconds"] > 0
    res = CliRunner().invoke(main, ["summary", str(out)])
    assert res.exit_code == 0, res.output
    assert "Training: adversarial, trades at L-inf eps 0.2 (3 step(s) of 0.1667, beta 3)" in res.output


def test_the_attack_in_the_step_follows_the_current_weights(mnist_test_batch):
    """The compiled perturbation reads the weights at each call: zeroed weights give no gradient steps."""
    import keras

    from robust import backend
    from robust.adversarial import make_perturb
    from robust.models import build_model

    x, y = mnist_test_batch
    x, y = x[:32], y[:32].astype(np.int32)
    keras.utils.set_random_seed(0)
    model = build_model("cnn_wong", (28, 28, 1), 10)
    config = AdversarialConfig("pgd", 0.1, steps=3)
    perturb = make_perturb(config, model, 10, (0.0, 1.0), warmup_steps=0, seed=0)
    step = backend.compile(perturb, [backend.spec((None, 28, 28, 1)), backend.spec((None,), "int32"),
                                     backend.spec((), "int64")])
    moved = backend.to_numpy(step(x, y, np.int64(0)))
    assert np.max(np.abs(moved - x)) <= 0.1 + 1e-6 and moved.min() >= 0 and moved.max() <= 1
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])  # no gradient: PGD cannot move
    still = backend.to_numpy(step(x, y, np.int64(0)))
    start = backend.to_numpy(step(x, y, np.int64(0)))
    assert np.array_equal(still, start)  # same keys and step: the random start alone, deterministically
    assert not np.allclose(still, moved)  # the second call saw the new weights
    assert not np.array_equal(backend.to_numpy(step(x, y, np.int64(1))), still)  # a fresh start per step


def test_a_collapsed_network_stops_training_and_is_never_chosen(mnist_test_batch):
    """A forced real case: all-zero weights have no input gradient, so robustness cannot be measured."""
    import keras

    from robust.adversarial import RobustValidation
    from robust.models import build_model

    x, y = mnist_test_batch
    keras.utils.set_random_seed(0)
    model = build_model("cnn_wong", (28, 28, 1), 10)
    lines = []
    check = RobustValidation(model, AdversarialConfig("pgd", 0.1, steps=2), x[:64], y[:64], (0.0, 1.0), seed=0,
                             log=lines.append)
    check.set_model(model)
    check.on_epoch_end(0, {"val_accuracy": 0.5})
    assert check.stopped is None and not np.isnan(check.history["pgd"][0]) and check.epoch == 0
    model.set_weights([np.zeros_like(w) for w in model.get_weights()])
    with pytest.warns(UserWarning, match="training collapsed at epoch 2"):
        check.on_epoch_end(1, {"val_accuracy": 0.1})
    assert np.isnan(check.history["pgd"][1]) and model.stop_training
    assert check.epoch == 0 and "keeps epoch 1" in check.stopped and "--adv-warmup" in check.stopped
    assert best_epoch({"clean": [0.2, 0.9], "pgd": [0.0, float("nan")], "fgsm": [0.0, float("nan")]}) == 0


# ------------------------------------------------------------------ the study (robust run)

STUDY = """
name = "adv-study"
[data]
dataset = "mnist"
train_limit = 300
test_limit = 60
[training]
epochs = 1
[[models]]
name = "mlp"
label = "MLP"
options = { width = 16, depth = 1 }
[[models]]
name = "mlp"
label = "Robust MLP"
options = { width = 16, depth = 1 }
adversarial = { method = "pgd", eps = 0.1, steps = 2 }
[[attacks]]
name = "fgsm"
[eps]
values = [0.0, 0.1]
[fooling]
enabled = false
[report]
examples = 2
saliency = 2
"""


@pytest.fixture(scope="module")
def adv_run(data_dir, tmp_path_factory):
    """A real study with a standard and an adversarially trained MLP (1 epoch on 270 images)."""
    tmp = tmp_path_factory.mktemp("adv-study")
    (tmp / "spec.toml").write_text(STUDY)
    res = CliRunner().invoke(main, ["run", str(tmp / "spec.toml"), "--out", str(tmp / "out"), "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    return tmp / "out", res.output


def test_study_trains_the_adversarial_model_under_its_own_key_and_records_its_threat_model(adv_run):
    out, output = adv_run
    assert "training mlp for 1 epochs, adversarially (pgd eps 0.1)" in output
    results = json.loads((out / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"mlp", "robust-mlp-pgd-eps-0-1"}
    assert models["mlp"]["adversarial"] is None
    adv = models["robust-mlp-pgd-eps-0-1"]["adversarial"]
    assert (adv["method"], adv["eps"], adv["steps"]) == ("pgd", 0.1, 2) and len(adv["epochs"]) == 1
    card = json.loads((out / "models" / "robust-mlp-pgd-eps-0-1" / "model.json").read_text())
    assert card["adversarial"]["eps"] == 0.1  # the study trained it adversarially, not just labelled it
    settings = json.loads((out / "models" / "robust-mlp-pgd-eps-0-1" / "settings.json").read_text())
    assert settings["settings"]["adversarial"]["method"] == "pgd"  # a changed threat model retrains
    assert (out / "records" / "robust-mlp-pgd-eps-0-1__fgsm__eps0.100000.json").is_file()


def test_reports_and_models_listing_say_how_each_model_was_trained(adv_run):
    out, _ = adv_run
    md, html = (out / "report.md").read_text(), (out / "report.html").read_text()
    for text in (md, html):
        assert "adversarial: PGD-2, L-inf eps 0.1" in text and "standard" in text
    results = json.loads((out / "results.json").read_text())
    robust, plain = results["models"]["robust-mlp-pgd-eps-0-1"], results["models"]["mlp"]
    cost = (plain["test_accuracy"] - robust["test_accuracy"]) * 100
    finding = next(line for line in md.splitlines() if line.startswith("- Robust MLP (pgd, eps 0.1)"))
    assert f"{100 * robust['test_accuracy']:.1f}%" in finding and f"{100 * plain['test_accuracy']:.1f}%" in finding
    assert (f"costs {abs(cost):.1f} points" if cost >= 0 else f"{abs(cost):.1f} points above") in finding
    res = CliRunner().invoke(main, ["models", "--trained", str(out)])
    assert res.exit_code == 0, res.output
    assert "training: standard (not adversarially trained)" in res.output
    assert "training: adversarial, pgd at L-inf eps 0.1 (2 step(s)" in res.output
    res = CliRunner().invoke(main, ["summary", str(out / "models" / "robust-mlp-pgd-eps-0-1")])
    assert "Training: adversarial, pgd at L-inf eps 0.1" in res.output


def _fake_results(conv_acc: float, fc_acc: float, n: int = 500) -> dict:
    """A results dict as the study writes it: two adversarially trained models and their standard twins."""
    adv = {"method": "pgd", "eps": 0.3, "steps": 7, "epochs": [{"ratio_to_standard": r} for r in (9.0, 7.5, 8.5)]}
    models = {}
    for key, kind, name, acc, seconds in (("cnn", "conv", "cnn_wong", 0.99, 40.0), ("mlp", "fc", "mlp", 0.97, 10.0)):
        models[key] = {"label": key.upper(), "kind": kind, "name": name, "options": {}, "params": 1000,
                       "test_accuracy": acc, "train_seconds": seconds, "epochs": 4, "adversarial": None, "ref": None}
        models[f"{key}-adv"] = {**models[key], "label": f"robust {key.upper()}", "test_accuracy": acc - 0.01,
                                "train_seconds": seconds * 10, "epochs": 5, "adversarial": adv}
    records = [{"model": k, "attack_key": a, "eps": 0.3, "n": n,
                "adversarial_accuracy": {"cnn-adv": conv_acc, "mlp-adv": fc_acc}.get(k, 0.0) + (0.02 if a == "pgd" else 0)}
               for k in models for a in ("pgd", "auto")]
    return {"models": models, "records": records}


@pytest.mark.parametrize("conv, fc, verdict", [(0.88, 0.60, "survives adversarial training"),
                                               (0.60, 0.88, "does not survive"),
                                               (0.80, 0.79, "within measurement noise")])
def test_findings_judge_the_convnet_advantage_from_the_worst_attack(conv, fc, verdict):
    from robust.report.findings import adversarial_findings

    lines = adversarial_findings(_fake_results(conv, fc))
    advantage = next(line for line in lines if line.startswith("At eps 0.3"))
    assert verdict in advantage and f"{100 * conv:.1f}%" in advantage  # the worst attack (auto), not PGD
    cost = next(line for line in lines if line.startswith("robust CNN"))
    assert "costs 1.0 points of clean accuracy (98.0% against 99.0%)" in cost
    assert "10.0x the training time (400 s for 5 epochs against 40 s for 4" in cost and "8.0x a standard epoch" in cost
