"""The minimum-norm attacks (DeepFool, FMN, CW-L2), the step API they are written on, and `robust attack` with them.

Every number here is computed on the session's LeNet-5 (one epoch on real MNIST) and real test images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from keras import ops

from robust import backend
from robust.attacks import PGD, CarliniWagnerL2, DeepFool, FMN, StepAttack, get_attack
from robust.attacks import minimum_norm
from robust.attacks.norms import L1Norm
from robust.cli import main
from robust.errors import RobustError
from robust.evaluation import evaluate_attack, minimal_radius_summary, smallest_breaking_eps
from robust.gradients import objective, success

GRIDS = {"inf": [0.02, 0.04, 0.06, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3], "2": [0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0]}


@pytest.fixture(scope="module")
def images(batch):
    x, y = batch
    return x[:100], y[:100]


@pytest.fixture(scope="module")
def pgd_radius(trained_lenet, images):
    """Per norm, each image's smallest eps on a fine grid at which PGD-40 (2 restarts) breaks it."""
    x, y = images
    out = {}
    for norm, grid in GRIDS.items():
        results = []
        evaluate_attack(trained_lenet, "pgd", x, y, grid, norm=norm, steps=40, restarts=2,
                        on_result=results.append)
        out[norm] = smallest_breaking_eps(results)
    return out


@pytest.mark.parametrize("make", [lambda: FMN(norm="inf"), lambda: FMN(norm="2"), lambda: CarliniWagnerL2()],
                         ids=["fmn-linf", "fmn-l2", "cw"])
def test_no_minimal_perturbation_is_larger_than_pgds_breaking_eps(trained_lenet, images, pgd_radius, make):
    """Issue 21: where PGD breaks an image at eps, the minimal perturbation found is at most 5% larger.

    At the attacks' defaults. DeepFool is not held to it (it stops at the first boundary it crosses;
    its docstring gives the measured share): ``test_deepfool_is_a_fast_upper_estimate`` checks it.
    """
    x, y = images
    attack = make()
    result = attack(trained_lenet, x, y, progress=False)
    pgd = pgd_radius[attack.norm.name]
    broken = np.isfinite(pgd) & (pgd > 0)
    assert broken.sum() > 50  # the grid reaches far enough for the comparison to mean something
    over = broken & ~(result.radius <= 1.05 * pgd)
    assert not over.any(), (f"{attack!r}: {over.sum()} images with a minimal perturbation above PGD's breaking eps "
                            f"+ 5%: {list(zip(result.radius[over][:5], pgd[over][:5]))}")
    # And the minimal perturbations are real: every finite radius is the size of an image the model gets wrong.
    found = np.isfinite(result.radius) & (result.clean_pred == result.labels)
    assert np.all(result.adv_pred[found] != result.labels[found])
    size = attack.norm.distance(backend.tensor(result.x_adv - x))
    assert np.allclose(backend.to_numpy(size)[found], result.radius[found], rtol=1e-4, atol=1e-5)
    assert result.x_adv.min() >= 0.0 and result.x_adv.max() <= 1.0
    assert np.all(result.radius[result.clean_pred != result.labels] == 0)


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_deepfool_is_a_fast_upper_estimate(trained_lenet, images, norm):
    """DeepFool breaks (nearly) every image, with real perturbations no smaller than FMN's minimal ones."""
    x, y = images
    fool = DeepFool(norm=norm)(trained_lenet, x, y, progress=False)
    fmn = FMN(norm=norm)(trained_lenet, x, y, progress=False)
    correct = fool.clean_pred == fool.labels
    assert np.isfinite(fool.radius[correct]).mean() > 0.95
    assert np.all(fool.adv_pred[correct & np.isfinite(fool.radius)] != fool.labels[correct & np.isfinite(fool.radius)])
    assert np.median(fmn.radius) <= np.median(fool.radius) <= 1.5 * np.median(fmn.radius)


def test_fmn_l1_finds_sparse_perturbations(trained_lenet, images):
    x, y = images
    result = FMN(norm="1", steps=100)(trained_lenet, x, y, progress=False)
    assert np.isfinite(result.radius).mean() > 0.95
    l2 = FMN(norm="2", steps=100)(trained_lenet, x, y, progress=False)
    both = np.isfinite(result.radius) & np.isfinite(l2.radius) & (l2.radius > 0)
    # An L1 perturbation concentrates on few pixels: its L1 size is far below what the L2 one spends in L1.
    spent = np.abs(l2.x_adv - x).reshape(len(x), -1).sum(axis=1)
    assert np.median(result.radius[both]) < np.median(spent[both])


def test_an_eps_counts_only_perturbations_within_it_and_a_sweep_searches_once(trained_lenet, images, monkeypatch):
    x, y = images
    searches = []
    original = minimum_norm.Attack.__call__
    monkeypatch.setattr(minimum_norm.Attack, "__call__", lambda self, *a, **k: searches.append(1) or
                        original(self, *a, **k))
    minimum_norm._SEARCHES.clear()
    results = []
    rows = evaluate_attack(trained_lenet, "fmn", x, y, [0.0, 0.05, 0.1, 0.2], norm="inf", on_result=results.append)
    assert len(searches) == 1  # four eps, one search
    radius = results[0].radius
    correct = results[0].clean_pred == results[0].labels
    for row, result in zip(rows, results):
        expected = np.mean(correct & ~(radius <= row["eps"] * (1 + 1e-6) + 1e-7))
        assert row["adversarial_accuracy"] == pytest.approx(expected)
        assert row["max_perturbation"] is None or row["max_perturbation"] <= row["eps"] + 1e-6
        assert row["minimal_radius"]["median"] == pytest.approx(np.median(radius), rel=1e-5)
    # Another model, or other images, search again.
    FMN(norm="inf", eps=0.1)(trained_lenet, x[:50], y[:50], progress=False)
    assert len(searches) == 2


def test_minimum_norm_settings_are_checked():
    with pytest.raises(RobustError, match="measures perturbations in L2; received norm L-inf"):
        get_attack("cw", norm="inf")
    with pytest.raises(RobustError, match="measures perturbations in L-inf and L2; received norm L1"):
        get_attack("pgd", eps=0.1, norm="1")
    with pytest.raises(RobustError, match="steps must be at least 1"):
        get_attack("deepfool", steps=0)
    assert get_attack("fmn").eps is None and get_attack("fmn", eps=0.5).eps == 0.5


def test_l1_projection_is_the_euclidean_projection(mnist):
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(6, 4, 4, 1)).astype(np.float32)
    radius = np.array([0.5, 1.0, 2.0, 5.0, 100.0, 0.01], np.float32)
    projected = backend.to_numpy(L1Norm().project(backend.tensor(delta), backend.tensor(radius)))
    for d, p, r in zip(delta.reshape(6, -1), projected.reshape(6, -1), radius):
        assert np.abs(p).sum() <= r * (1 + 1e-5)
        if np.abs(d).sum() <= r:
            assert np.allclose(p, d)
            continue
        # The projection onto {|v|_1 <= r} soft-thresholds by the theta that makes the L1 norm r.
        lo, hi = 0.0, np.abs(d).max()
        for _ in range(60):
            theta = (lo + hi) / 2
            lo, hi = (theta, hi) if np.maximum(np.abs(d) - theta, 0).sum() > r else (lo, theta)
        assert np.allclose(p, np.sign(d) * np.maximum(np.abs(d) - theta, 0), atol=1e-5)


def test_radius_summary_names_its_statistics():
    summary = minimal_radius_summary(np.array([0.0, 1.0, 2.0, 3.0, np.inf, np.inf], np.float32))
    assert summary["median"] == pytest.approx(2.5)  # the mean of the two middle values, not the upper one
    assert summary["never_broken"] == pytest.approx(1 / 3) and summary["per_image"][4] is None
    assert minimal_radius_summary(np.array([1.0, np.inf, np.inf]))["median"] is None  # beyond the search


class BasicIterative(StepAttack):
    """The module docstring's example: basic iterative FGSM in L-inf, as a plugin writes it."""

    name = "bim-test"
    state = {"x": "image", "found": "flag", "loss": "vector"}

    def __init__(self, *, eps: float = 0.1, steps: int = 10, seed: int = 0):
        super().__init__(eps=eps, seed=seed)
        self.steps = steps

    def effective_step_size(self) -> float:
        return 2.5 * self.eps / self.steps

    def start(self, ctx):
        n = ops.shape(ctx.x)[0]
        return {"x": ctx.x, "found": ops.zeros((n,), "bool"), "loss": ops.zeros((n,))}

    def step(self, ctx, i, s):
        def value(xt):
            z = ctx.logits(xt)
            return objective(z, ctx.goal), z

        loss, grad, z = backend.value_and_grad(value)(s["x"])
        moved = s["x"] + ctx.step_size * ops.sign(grad)
        x_new = ops.clip(ctx.x + ops.clip(moved - ctx.x, -ctx.eps, ctx.eps), ctx.low, ctx.high)
        found = success(z, ctx.goal)
        keep = ops.reshape(found, (-1, 1, 1, 1))
        return {"x": ops.where(keep, s["x"], x_new), "found": found, "loss": loss}

    def outcome(self, s):
        return s["x"], s["found"], s["loss"]


def test_a_plugin_step_attack_runs_compacted_as_in_one_loop(trained_lenet, images):
    x, y = images
    compacted = BasicIterative(eps=0.1, steps=12)
    compacted.compact_every = 3
    whole = BasicIterative(eps=0.1, steps=12)
    whole.compact_every = None
    a, b = compacted(trained_lenet, x, y, progress=False), whole(trained_lenet, x, y, progress=False)
    assert np.array_equal(a.success, b.success) and a.success.mean() > 0.2
    assert np.allclose(a.x_adv, b.x_adv, atol=1e-6) and a.perturbation.max() <= 0.1 + 1e-6
    # PGD at the same settings breaks at least as many (it keeps the worst iterate, from a random start too).
    assert PGD(eps=0.1, steps=12, random_start=False)(trained_lenet, x, y, progress=False).success.sum() >= \
        a.success.sum() - 2


def test_robust_attack_fmn_prints_each_images_minimal_norm(lenet_dir, tmp_path):
    out = tmp_path / "fmn.json"
    res = CliRunner().invoke(main, ["attack", str(lenet_dir), "--attack", "fmn", "--limit", "60", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "minimal L2 perturbation per image (the first 10 of 60" in res.stdout
    assert "median minimal L2:" in res.stdout and "radius CDF" in res.stdout
    report = json.loads(out.read_text())
    per_image = report["radius"]["per_image"]
    assert report["norm"] == "2" and report["rows"] == [] and len(per_image) == 60
    finite = sorted(v for v in per_image if v is not None)
    assert report["radius"]["median"] == pytest.approx(float(np.median(finite)), rel=1e-5)
    # With --eps: accuracy per eps from the same search, and the radii again.
    res = CliRunner().invoke(main, ["attack", str(lenet_dir), "--attack", "deepfool", "--norm", "inf", "--eps",
                                    "0.05,0.1", "--limit", "60", "--out", str(tmp_path / "df.json")])
    assert res.exit_code == 0, res.output
    swept = json.loads((tmp_path / "df.json").read_text())
    radius = np.array([np.inf if v is None else v for v in swept["radius"]["per_image"]])
    assert swept["rows"][0]["clean_accuracy"] >= 0.9
    for row in swept["rows"]:
        assert row["adversarial_accuracy"] == pytest.approx(np.mean(radius > row["eps"] * (1 + 1e-6) + 1e-7),
                                                            abs=1 / 60 + 1e-9)


@pytest.fixture(scope="module")
def lenet_dir(trained_lenet, tmp_path_factory):
    from robust.artifacts import save_trained

    folder = tmp_path_factory.mktemp("runs") / "lenet5"
    save_trained(folder, trained_lenet, {
        "model": "lenet5", "dataset": "mnist", "data_path": None, "input_shape": [28, 28, 1],
        "value_range": [0.0, 1.0], "class_names": [str(i) for i in range(10)], "num_classes": 10,
    })
    return folder


def test_the_reports_radius_curve_uses_a_minimum_norm_attacks_radii(tmp_path):
    """Where a spec ran a minimum-norm attack in the headline's norm, the headline and the curve use its radii."""
    from robust.report import figures
    from robust.report.robustness import headline, headline_lines

    minimal = minimal_radius_summary(np.array([0.0, 0.05, 0.08, 0.09, 0.11, 0.13, 0.2, np.inf]))
    minimal.pop("per_image")

    def record(key, attack, eps, acc, **extra):
        return {"model": "m", "attack_key": key, "attack": attack, "eps": eps, "adversarial_accuracy": acc,
                "norm": "inf", **extra}

    records = [record("auto", "auto", e, a) for e, a in ((0.0, 0.9), (0.1, 0.5), (0.2, 0.2))]
    records += [record("fmn", "fmn", e, a, minimal_radius=minimal) for e, a in ((0.0, 0.9), (0.1, 0.55), (0.2, 0.25))]
    results = {"records": records, "models": {"m": {"label": "LeNet", "kind": "conv", "test_accuracy": 0.9,
                                                     "checks": []}}}
    head = headline(results)
    assert head["models"]["m"]["minimal"]["attack"] == "fmn"
    assert head["models"]["m"]["minimal"]["median"] == pytest.approx(0.1)  # (0.09 + 0.11) / 2
    assert "0.1 (fmn, each image's minimal perturbation)" in "\n".join(headline_lines(results))
    path = figures.radius_cdf(results, head, tmp_path / "radius.png")
    assert path and (tmp_path / "radius.png").stat().st_size > 1000
