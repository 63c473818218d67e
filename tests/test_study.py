"""End to end: `robust run` on a tiny spec with real training and real attacks, then its report."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from robust.cli import main
from robust.checks import gradient_checks, sanity_checks
from robust.study import run_lock, strip_wall_clock

TINY = """
name = "tiny"
title = "Tiny <study> & co"
seed = 0

[data]
dataset = "mnist"
train_limit = 3000
test_limit = 100

[training]
epochs = 1
batch_size = 64
lr = 0.003

[[models]]
name = "lenet5"

[[models]]
name = "mlp"
label = "MLP 64"
options = { depth = 1, width = 64 }

[[attacks]]
name = "fgsm"

[[attacks]]
name = "pgd"
steps = 5

[eps]
values = [0.0, 0.1, 0.3]

[fooling]
classes = [3, 7]
max_steps = 100

[report]
examples = 4
saliency = 3
"""


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def run_dir(spec_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "tiny"
    result = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    # The console says where everything went, and how each model's training goes, epoch by epoch (issue 22).
    lines = result.output.splitlines()
    for label in ("lenet5", "MLP 64"):
        started = lines.index(next(line for line in lines if line.startswith(f"Model {label}: training")))
        assert re.fullmatch(rf"Model {label}: epoch 1/1, validation accuracy 0\.\d{{4}} \(\d+ s\)", lines[started + 1])
    assert f"Models: {out / 'models'}" in result.output and f"Results: {out / 'results.json'}" in result.output
    assert f"Report: {out / 'report.html'}" in result.output
    return out


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


@pytest.mark.slow
def test_run_writes_results_figures_and_reports(run_dir):
    r = _results(run_dir)
    assert r["schema"] == "robust.results/1"
    assert set(r["models"]) == {"lenet5", "mlp-64"}
    assert len(r["records"]) == 2 * 2 * 3
    for rec in r["records"]:
        assert {"model", "attack", "attack_key", "eps", "n", "clean_accuracy", "adversarial_accuracy",
                "success_rate", "mean_perturbation", "max_perturbation", "seconds", "params"} <= set(rec)
        assert rec["n"] == 100
        assert (rec["max_perturbation"] is None) == (rec["eps"] == 0)  # eps 0 flips nothing
        assert rec["eps"] == 0 or rec["max_perturbation"] <= rec["eps"] + 1e-5
        if rec["eps"] == 0:
            assert rec["adversarial_accuracy"] == rec["clean_accuracy"]
    lenet = r["models"]["lenet5"]
    assert lenet["kind"] == "conv" and r["models"]["mlp-64"]["kind"] == "fc"
    assert lenet["test_accuracy"] > 0.8  # 1 epoch on 3000 real images; chance is 0.1
    assert {c["status"] for c in lenet["checks"]} <= {"pass", "warn"}
    assert [f["class"] for f in lenet["fooling"]] == [3, 7]
    assert lenet["summary"]["totals"]["params"] == lenet["params"]
    for name in ("report.html", "report.md", "figures/accuracy_fgsm.png", "figures/accuracy_pgd.png",
                 "figures/examples_lenet5.png", "figures/fooling_lenet5.png", "figures/saliency_mlp-64.png",
                 "figures/filters_lenet5.png", "models/lenet5/model.keras", "models/lenet5/model.json"):
        assert (run_dir / name).is_file(), name
    html = (run_dir / "report.html").read_text()
    assert 'src="data:image/png;base64,' in html and 'src="figures' not in html
    assert "Tiny &lt;study&gt; &amp; co" in html and "<study>" not in html
    # the findings are written from the numbers
    assert f"{100 * lenet['test_accuracy']:.1f}%" in html
    # What the network learned (issue 14): figures per layer, locality in the findings, fields in the table
    for name in ("learned_lenet5_0.png", "learned_lenet5_2.png", "learned_mlp-64_0.png"):
        assert (run_dir / "figures" / name).is_file(), name
    assert "What the network learned" in html and "First-layer locality" in html
    assert lenet["summary"]["rows"][2]["receptive_field"]["size"] == [5, 5]


@pytest.mark.slow
def test_numbers_agree_with_robust_attack(run_dir, tmp_path):
    r = _results(run_dir)
    out = tmp_path / "attack.json"
    res = CliRunner().invoke(main, ["attack", str(run_dir / "models" / "lenet5"), "--attack", "fgsm",
                                    "--eps", "0.1,0.3", "--limit", "100", "--seed", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())
    rows = rows["rows"]
    for row in rows:
        rec = next(x for x in r["records"] if x["model"] == "lenet5" and x["attack_key"] == "fgsm"
                   and x["eps"] == row["eps"])
        assert row["adversarial_accuracy"] == pytest.approx(rec["adversarial_accuracy"], abs=1e-9)
        assert row["clean_accuracy"] == pytest.approx(rec["clean_accuracy"], abs=1e-9)


@pytest.mark.slow
def test_existing_run_needs_resume_or_force(run_dir, spec_file):
    res = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(run_dir)])
    assert res.exit_code == 2 and "already holds a run" in res.output and "--resume" in res.output


@pytest.mark.slow
def test_second_run_at_once_is_refused(run_dir, spec_file):
    with run_lock(run_dir):
        res = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(run_dir), "--resume"])
    assert res.exit_code == 2 and "in use by another robust run" in res.output


@pytest.mark.slow
def test_report_rerenders_without_recomputing(run_dir, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "records"))
    results_before = (copy / "results.json").read_bytes()
    shutil.rmtree(copy / "figures")
    (copy / "report.html").unlink()
    # names that come from models or plugins are escaped
    r = json.loads(results_before)
    r["models"]["lenet5"]["label"] = "<script>alert(1)</script>"
    r["run"]["data"]["class_names"][3] = "<img src=x onerror=alert(2)>"
    (copy / "results.json").write_text(json.dumps(r))
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    html = (copy / "report.html").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert(1)" not in html
    assert "<img src=x" not in html
    md = (copy / "report.md").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in md and "<script>" not in md
    assert (copy / "figures" / "examples_lenet5.png").is_file()
    res = CliRunner().invoke(main, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 2 and "no results.json" in res.output


@pytest.mark.slow
def test_report_renders_runs_without_the_learned_arrays(run_dir, tmp_path):
    """Runs made before issue 14 have no learned* arrays and no receptive fields: the report still renders."""
    import numpy as np

    copy = tmp_path / "old"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("models", "records", "figures"))
    for npz in (copy / "arrays").glob("*.npz"):
        with np.load(npz) as arrays:
            kept = {k: arrays[k] for k in arrays.files if not k.startswith("learned")}
        np.savez_compressed(npz, **kept)
    r = _results(copy)
    for m in r["models"].values():
        for row in m["summary"]["rows"]:
            row.pop("receptive_field", None)
    (copy / "results.json").write_text(json.dumps(r))
    res = CliRunner().invoke(main, ["report", str(copy)])
    assert res.exit_code == 0, res.output
    html = (copy / "report.html").read_text()
    assert "What the network learned" not in html and "First-layer locality" not in html
    assert not list((copy / "figures").glob("learned_*"))


@pytest.mark.slow
def test_resume_after_kill_matches_uninterrupted_run(run_dir, spec_file, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "robust.cli", "run", str(spec_file), "--out", str(out), "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list((out / "records").glob("*.json"))) >= 3:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.json").exists()
    done = len(list((out / "records").glob("*eps*.json")))
    res = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    assert f"{done} of 12 attack results already done" in res.stdout or done == 0
    assert strip_wall_clock(_results(out))["records"] == strip_wall_clock(_results(run_dir))["records"]
    a, b = strip_wall_clock(_results(out)), strip_wall_clock(_results(run_dir))
    for key in ("models", "spec"):
        for d in (a, b):
            d.get("spec", {}).pop("source", None)
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True)


@pytest.mark.slow
def test_masked_model_is_flagged(trained_lenet, mnist_test_batch):
    """Logits x 1000 saturate the softmax, as defensive distillation did: the checks must fail it."""
    import keras

    from robust.evaluation import evaluate_attack

    x, y = mnist_test_batch
    x, y = x[:200], y[:200]
    inputs = keras.Input(trained_lenet.input_shape[1:])
    masked = keras.Model(inputs, keras.layers.Rescaling(1000.0)(trained_lenet(inputs)), name="masked")
    eps = [0.0, 0.1, 0.2, 0.3]

    def checks_for(model):
        records = [{**row, "attack_key": name, "model": "m"}
                   for name, params in (("fgsm", {}), ("pgd", {"steps": 10}))
                   for row in evaluate_attack(model, name, x, y, eps, seed=0, **params)]
        return {c["check"]: c for c in sanity_checks(records, gradient_checks(model, x, y, seed=0), 10)}

    honest = checks_for(trained_lenet)
    assert all(c["status"] == "pass" for c in honest.values()), honest
    flagged = checks_for(masked)
    assert flagged["no large fraction of zero input gradients"]["status"] == "fail"
    assert flagged["eps covering the whole value range drives accuracy to chance or below"]["status"] == "fail"


def _chromium():
    """Debian's headless Chromium through Selenium, or a skip that says why."""
    chromium, driver_path = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("Chromium not installed: `apt-get install chromium chromium-driver` (Debian) enables this test")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium not installed: pip install -e '.[test]'")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-quic", "--window-size=1280,2400"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=options)


@pytest.mark.slow
def test_report_renders_in_a_real_browser(run_dir):
    driver = _chromium()
    try:
        driver.get((run_dir / "report.html").as_uri())
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);")
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        title = driver.title
        artifacts = Path(os.environ.get("ROBUST_TEST_ARTIFACTS", Path(__file__).parent / "artifacts"))
        artifacts.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(artifacts / "report.png"))
    finally:
        driver.quit()
    assert "Tiny <study> & co" in title
    assert len(images) >= 2 + 2 * 3  # two accuracy curves, and examples, fooling, saliency per model
    broken = [alt for complete, width, alt in images if not complete or width == 0]
    assert not broken, f"images that did not load: {broken}"
    assert not errors, f"console errors: {errors}"


@pytest.mark.slow
def test_quiet_prints_only_the_result(run_dir, spec_file, tmp_path):
    """--quiet: the robust-accuracy lines and the report's path, nothing else (models reused by --force)."""
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    res = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(copy), "--force", "--quiet"])
    assert res.exit_code == 0, res.output
    lines = res.stdout.splitlines()
    assert lines[0].startswith("Robust accuracy") and lines[-1] == f"Report: {copy / 'report.html'}"
    assert len(lines) == 2 + len(_results(copy)["models"]), res.stdout
