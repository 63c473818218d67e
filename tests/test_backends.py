"""Keras 3 backends: a .keras file attacked under another backend, JAX and PyTorch without TensorFlow, errors.

Keras chooses its backend once, at import, so every backend runs in its own
subprocess (tests/backend_worker.py) with ``KERAS_BACKEND`` set. Backends
that are not installed are skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("backend_worker.py")
ALL_BACKENDS = ("tensorflow", "jax", "torch")


def installed(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


#: The backends this environment can run (CI installs TensorFlow and JAX; see README, "Keras backends").
BACKENDS = tuple(b for b in ALL_BACKENDS if installed(b))


def needs(*names: str):
    missing = [n for n in names if not installed(n)]
    return pytest.mark.skipif(bool(missing), reason=f"backend not installed: {', '.join(missing)} "
                                                    "(pip install -e '.[jax]' or '.[torch]')")


def run_under(backend: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{backend} subprocess failed:\n{done.stderr[-4000:]}"
    return done


# ------------------------------------------------------------------- errors

@pytest.mark.parametrize("name", ["no_such_backend", "numpy"])
def test_an_unsupported_keras_backend_is_refused_with_the_list(name):
    env = dict(os.environ, KERAS_BACKEND=name)
    done = subprocess.run([sys.executable, "-c", "import robust, robust.backend"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("robust.errors.RobustError") and f"KERAS_BACKEND={name!r}" in last
    assert "tensorflow, jax, torch" in last


@pytest.mark.parametrize("name", ["no_such_backend", "numpy"])
def test_the_cli_refuses_an_unsupported_keras_backend_with_exit_code_2(name):
    """One paragraph naming the backends, no traceback, before Keras (which fails on an unknown name) is imported."""
    env = dict(os.environ, KERAS_BACKEND=name)
    done = subprocess.run([sys.executable, "-m", "robust.cli", "models"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""
    message = " ".join(done.stderr.split())
    assert f"KERAS_BACKEND={name!r} is not a backend robust runs on" in message
    assert "Supported backends: tensorflow, jax, torch" in message


# ------------------------------------------------------------------- seeding

TRAIN_AND_SAVE = """
import json, sys
from robust.data import load_dataset
from robust.training import train
result = train("lenet5", load_dataset("mnist").limited(300, seed=0), epochs=1, batch_size=64, seed=3, progress=False)
result.model.save(sys.argv[1])
print(json.dumps({"tensorflow_imported": "tensorflow" in sys.modules}))
"""


@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b, "tensorflow")) for b in ("jax", "torch")])
def test_training_and_saving_under_another_backend_leave_an_installed_tensorflow_alone(backend, tmp_path,
                                                                                      data_dir):
    """Seeded training and ``model.save`` under JAX or PyTorch with TensorFlow installed and not blocked.

    Keras's ``set_random_seed`` and its serialiser import TensorFlow whenever it is installed, whatever the
    backend; ``robust.backend`` tells Keras it is absent, as on a machine without it.
    """
    out = tmp_path / "model.keras"
    found = json.loads(run_under(backend, "-c", TRAIN_AND_SAVE, str(out), timeout=300).stdout.strip().splitlines()[-1])
    assert found == {"tensorflow_imported": False} and out.stat().st_size > 100_000


# --------------------------------------------------------- across backends

N_TRAIN, N_TEST = 3000, 300
#: (trained under, attacked under): every ordered pair of two installed backends, TensorFlow in each.
PAIRS = [(a, b) for a in ALL_BACKENDS for b in ALL_BACKENDS if a != b and "tensorflow" in (a, b)]


def needs_pair(pair):
    return pytest.param(*pair, marks=needs(*pair), id=f"{pair[0]}-to-{pair[1]}")


@pytest.fixture(scope="module")
def cross(tmp_path_factory, data_dir):
    """LeNet-5 trained under every installed backend, each attacked under every one.

    ``{"cards": {backend: card}, "y": labels, (model_backend, attack_backend): arrays, "tf_imported": {...}}``.
    The processes of other backends than TensorFlow run with ``import tensorflow`` blocked
    (tests/backend_worker.py).
    """
    if len(BACKENDS) < 2:
        pytest.skip(f"needs two backends installed; found {', '.join(BACKENDS) or 'none'} (pip install -e '.[jax]')")
    tmp = tmp_path_factory.mktemp("backends")
    models = [str(tmp / f"lenet5_{b}.keras") for b in BACKENDS]
    out = {"cards": {}, "tf_imported": {}, "tmp": tmp}
    for backend, path in zip(BACKENDS, models):
        run_under(backend, str(WORKER), "train", path, str(N_TRAIN))
        out["cards"][backend] = json.loads(Path(path + ".json").read_text())
    for backend in BACKENDS:
        run_under(backend, str(WORKER), "attack", str(tmp / f"attacks_{backend}.npz"), str(N_TEST), *models)
        with np.load(tmp / f"attacks_{backend}.npz") as found:
            assert str(found["backend"]) == backend
            out["tf_imported"][backend] = bool(found["tensorflow_imported"])
            for i, trained in enumerate(BACKENDS):
                out[(trained, backend)] = {k[:-2]: found[k] for k in found.files if k.endswith(f"_{i}")}
            out["y"] = found["y"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("trained, attacked", [needs_pair(p) for p in PAIRS])
def test_same_fgsm_images_under_another_backend(cross, trained, attacked):
    home, away = cross[(trained, trained)], cross[(trained, attacked)]
    assert np.mean(home["clean"] == cross["y"]) > 0.8  # a real model, trained for one epoch
    np.testing.assert_array_equal(away["clean"], home["clean"])
    diff = np.abs(away["fgsm"] - home["fgsm"])
    # The sign of a gradient within float rounding of 0 may differ between backends; every other pixel agrees.
    assert np.mean(diff > 1e-6) < 1e-4, f"{np.mean(diff > 1e-6):.2e} of the pixels differ"
    assert np.mean(away["fgsm_pred"] != home["fgsm_pred"]) <= 0.005


@pytest.mark.slow
@pytest.mark.parametrize("trained, attacked", [needs_pair(p) for p in PAIRS])
def test_same_pgd_accuracy_under_another_backend(cross, trained, attacked):
    home, away, y = cross[(trained, trained)], cross[(trained, attacked)], cross["y"]
    home_acc, away_acc = np.mean(home["pgd_pred"] == y), np.mean(away["pgd_pred"] == y)
    assert abs(home_acc - away_acc) <= 0.005, \
        f"PGD accuracy {home_acc:.3f} under {trained}, {away_acc:.3f} under {attacked}"
    assert home_acc < np.mean(home["clean"] == y) - 0.1  # the attack does something
    # Random starts: every backend draws the same per-image numbers (one hash), so they agree as closely.
    random_home, random_away = np.mean(home["pgd_random_pred"] == y), np.mean(away["pgd_random_pred"] == y)
    assert abs(random_home - random_away) <= 0.005, f"{random_home:.3f} vs {random_away:.3f}"


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in ("jax", "torch")])
def test_art_agrees_with_our_attacks_under(cross, backend, mnist):
    """ART (TensorFlow only, in this process) and our FGSM and PGD run under another backend, same model and images.

    The model is the LeNet-5 trained under TensorFlow; our numbers come from the cross fixture's
    subprocess under ``backend``. FGSM: the same images. PGD-10 without a random start (both
    deterministic, step 2.5 eps / 10): ours keeps the worst iterate, so it is at most 0.5 points above ART's.
    """
    import keras
    from art.attacks.evasion import FastGradientMethod, ProjectedGradientDescent
    from art.estimators.classification import TensorFlowV2Classifier

    from robust.data import balanced_indices

    idx = balanced_indices(mnist.y_test, N_TEST, seed=1)
    x, y = mnist.x_test[idx], cross["y"]
    assert np.array_equal(mnist.y_test[idx], y)
    model = keras.saving.load_model(cross["tmp"] / "lenet5_tensorflow.keras", compile=False)
    art = TensorFlowV2Classifier(model, nb_classes=10, input_shape=(28, 28, 1), clip_values=(0.0, 1.0),
                                 loss_object=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ours = cross[("tensorflow", backend)]
    art_fgsm = FastGradientMethod(art, norm=np.inf, eps=0.1, batch_size=128).generate(x, y=y)
    assert np.mean(np.abs(ours["fgsm"] - art_fgsm) > 1e-6) < 1e-4
    art_pgd = ProjectedGradientDescent(art, norm=np.inf, eps=0.1, eps_step=0.025, max_iter=10, num_random_init=0,
                                       batch_size=128, verbose=False).generate(x, y=y)
    art_acc = float(np.mean(np.argmax(model.predict(art_pgd, verbose=0), axis=1) == y))
    ours_acc = float(np.mean(ours["pgd_pred"] == y))
    assert ours_acc <= art_acc + 0.005, f"ours under {backend} {ours_acc:.3f} vs ART {art_acc:.3f}"
    assert ours_acc < np.mean(ours["clean"] == y) - 0.1


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in ("jax", "torch")])
def test_other_backends_never_import_tensorflow(cross, backend):
    """Trained, saved, loaded and attacked with ``import tensorflow`` failing; the card names the backend."""
    card = cross["cards"][backend]
    assert card["tensorflow_imported"] is False and cross["tf_imported"][backend] is False
    assert card["backend"] == card["versions"]["backend"] == backend and card["versions"][backend]
    assert "tensorflow" not in card["versions"] and cross["cards"]["tensorflow"]["backend"] == "tensorflow"
    # TensorBoard scalars without TensorFlow: event files through the tensorboard package, or the CSV fallback.
    for run in ("train", "validation"):
        folder = cross["tmp"] / f"lenet5_{backend}.keras.tb" / run
        assert any(folder.glob("events.out.tfevents.*")) or (folder / "scalars.csv").read_text().count("\n") > 1


# ------------------------------------------ adversarial training on every backend

@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in ("jax", "torch")])
def test_adversarial_training_raises_pgd_accuracy_under(backend, tmp_path, data_dir):
    """PGD-3 adversarial training inside the backend's own train step (JAX: jitted) beats standard training.

    cnn_wong, one epoch on 3000 MNIST images each way, PGD-20 at eps 0.1 on 300 test images, all in
    one process with ``import tensorflow`` blocked (tests/test_adversarial.py does the same on TensorFlow).
    """
    out = tmp_path / "adversarial.json"
    run_under(backend, str(WORKER), "adversarial", str(out), str(N_TRAIN), "pgd", "0.1")
    found = json.loads(out.read_text())
    robust_acc, standard_acc = found["adversarial"]["pgd_accuracy"], found["standard"]["pgd_accuracy"]
    print(f"{backend}: PGD-20 accuracy at eps 0.1, adversarial {robust_acc:.3f}, standard {standard_acc:.3f}")
    assert robust_acc > standard_acc + 0.2
    # Each backend draws its own initial weights; after this one short epoch the adversarial model's clean
    # accuracy was 0.64 under PyTorch (whose train step equals TensorFlow's: the test below), chance is 0.1.
    assert found["adversarial"]["clean_accuracy"] > 0.6 and found["tensorflow_imported"] is False
    card = found["adversarial"]["card"]
    assert card["backend"] == backend and found["standard"]["card"]["adversarial"] is None
    assert (card["adversarial"]["method"], card["adversarial"]["steps"]) == ("pgd", 3)
    assert card["adversarial"]["epochs"][0]["pgd_val_accuracy"] > 0.3  # measured on the validation slice too


@pytest.fixture(scope="module")
def tensorflow_step(tmp_path_factory, data_dir):
    out = tmp_path_factory.mktemp("step") / "tensorflow.npz"
    run_under("tensorflow", str(WORKER), "step", str(out))
    with np.load(out) as found:
        return dict(found)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in ("jax", "torch")])
def test_adversarial_train_step_moves_the_weights_as_on_tensorflow(backend, tensorflow_step, tmp_path):
    """One PGD-3 step and one TRADES step of cnn_wong, same weights, batch and random starts: TensorFlow's update.

    PGD's update agrees to float rounding. TRADES ascends the KL divergence from a start next to x, where
    it and its gradient are nearly 0, so a pixel's gradient sign may flip with rounding (JAX: up to 1% of
    the largest weight change); it must still be the same update.
    """
    out = tmp_path / f"{backend}.npz"
    run_under(backend, str(WORKER), "step", str(out))
    with np.load(out) as found:
        ours = dict(found)
    for method, share in (("pgd", 1e-5), ("trades", 0.02)):
        names = [k for k in ours if k.startswith(f"{method}_") and "_start_" not in k]
        moved = max(np.abs(tensorflow_step[k] - tensorflow_step[k.replace("_", "_start_", 1)]).max() for k in names)
        differs = max(np.abs(ours[k] - tensorflow_step[k]).max() for k in names)
        assert moved > 0.01, f"{method}: the step barely moved the weights ({moved:.2e})"
        assert differs <= share * moved, f"{method} under {backend}: {differs:.2e} off TensorFlow's update {moved:.2e}"


# ---------------------------------------------------------- mixed precision

@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param("jax", marks=needs("jax"))])
def test_mixed_precision_is_bfloat16_on_jax_and_attacks_keep_float32_gradients(backend, tmp_path, data_dir):
    """``--mixed-precision`` on JAX trains in bfloat16 on the CPU; the loss and input gradient stay float32.

    The trained weights in the bfloat16 model and in the saved float32 model give input gradients
    pointing the same way and PGD accuracies within 5 points.
    """
    out = tmp_path / "mixed.json"
    run_under(backend, str(WORKER), "mixed", str(out), "1000")
    found = json.loads(out.read_text())
    assert found["policy"] == "mixed_bfloat16" and found["compute_dtypes"] == ["bfloat16"]
    assert found["card"]["mixed_precision"] is True and found["saved_dtypes"] == ["float32"]
    assert any("mixed precision bfloat16" in line for line in found["log"])
    for model in ("sixteen", "float32"):
        assert found[model]["loss_dtype"] == found[model]["grad_dtype"] == "float32"
    assert found["float32"]["clean_accuracy"] > 0.4  # 15 steps on 900 images in bfloat16; chance is 0.1
    assert found["gradient_cosine_median"] > 0.9
    assert abs(found["sixteen"]["pgd_accuracy"] - found["float32"]["pgd_accuracy"]) <= 0.05


# --------------------------------------------- the CLI's study commands on every backend

@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in ("jax", "torch")])
def test_run_report_and_eval_through_the_cli_under(backend, tmp_path, data_dir):
    """``robust run`` on a tiny spec, ``robust report`` on its folder, ``robust eval`` on its model, TF blocked."""
    run_under(backend, str(WORKER), "cli", str(tmp_path))
    found = json.loads((tmp_path / "cli.json").read_text())
    for command in ("run", "report", "eval"):
        assert found[command]["exit_code"] == 0, f"robust {command}: {found[command]['output']}"
    assert found["tensorflow_imported"] is False
    run = json.loads((tmp_path / "run" / "results.json").read_text())
    assert run["run"]["versions"]["backend"] == backend and run["run"]["versions"][backend]
    assert run["models"]["lenet5"]["test_accuracy"] > 0.3  # 16 steps on 1000 real images; chance is 0.1
    html = (tmp_path / "run" / "report.html").read_text()
    assert f"backend {backend}" in html and 'src="data:image/png;base64,' in html
    evaluated = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert evaluated["run"]["versions"]["backend"] == backend
    # The same model, images (seed 0, first 50 of the balanced subset) and FGSM: the same numbers.
    for eps in (0.0, 0.1):
        ran = next(r for r in run["records"] if r["attack_key"] == "fgsm" and r["eps"] == eps)
        ev = next(r for r in evaluated["records"] if r["attack_key"] == "fgsm" and r["eps"] == eps)
        assert (ev["n"], ev["clean_accuracy"], ev["adversarial_accuracy"]) == (
            ran["n"], ran["clean_accuracy"], ran["adversarial_accuracy"])
    pgd = [r for r in run["records"] if r["attack_key"] == "pgd"]
    assert pgd[-1]["adversarial_accuracy"] < pgd[0]["adversarial_accuracy"]  # eps 0.1 hurts; eps 0 does not


# ------------------------------- the attack property tests under every backend

# The whole of tests/test_driver.py passes under JAX too (5.5 minutes on 2 busy cores, mostly XLA compiling
# one kernel per attack configuration); CI runs the stale-weights and the L-inf batch-size test.
PROPERTY_TESTS = ["tests/test_driver.py", "-k",
                  "cached_kernel_follows_new_weights or do_not_depend_on_the_batch_size and inf"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", [pytest.param(b, marks=needs(b)) for b in ("jax", "torch")])
def test_driver_property_tests_pass_under(backend):
    """Stale weights (a cached kernel follows new weights) and batch-size independence, on JAX and PyTorch."""
    done = run_under(backend, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *PROPERTY_TESTS, timeout=900)
    assert " passed" in done.stdout and " failed" not in done.stdout


# ------------------------------------ pieces shared by the backends without tf.data

def test_array_batches_reshuffle_every_epoch_from_the_seed():
    from robust.backend.common import ArrayBatches

    x, y = np.arange(10, dtype=np.float32).reshape(10, 1), np.arange(10)
    a, b = ArrayBatches(x, y, 4, shuffle_seed=3), ArrayBatches(x, y, 4, shuffle_seed=3)
    assert len(a) == 3 and [len(a[i][0]) for i in range(3)] == [4, 4, 2]

    def epoch(batches):
        return np.concatenate([batches[i][1] for i in range(len(batches))])

    first = epoch(a)
    assert sorted(first) == list(range(10)) and np.array_equal(epoch(b), first)
    assert all(np.array_equal(a[i][0][:, 0], a[i][1]) for i in range(3))  # images stay with their labels
    a.on_epoch_end()
    assert sorted(epoch(a)) == list(range(10)) and not np.array_equal(epoch(a), first)
    plain = ArrayBatches(x, None, 4)
    assert np.array_equal(np.concatenate([plain[i] for i in range(3)]), x)


def test_scalar_writer_without_tensorflow(tmp_path):
    """Event files through the tensorboard package when it is installed, else scalars.csv with a warning."""
    import warnings

    from robust.backend.common import ScalarWriter

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        writer = ScalarWriter(tmp_path)
        for step in range(3):
            writer.write("epoch_accuracy", 0.5 + step / 10, step)
        writer.close()
    if installed("tensorboard"):
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        from tensorboard.util.tensor_util import make_ndarray

        events = EventAccumulator(str(tmp_path))
        events.Reload()
        found = [(e.step, float(make_ndarray(e.tensor_proto))) for e in events.Tensors("epoch_accuracy")]
    else:
        assert any("scalars.csv" in str(w.message) for w in caught)
        rows = (tmp_path / "scalars.csv").read_text().splitlines()[1:]
        found = [(int(r.split(",")[1]), float(r.split(",")[2])) for r in rows]
    assert [s for s, _ in found] == [0, 1, 2]
    np.testing.assert_allclose([v for _, v in found], [0.5, 0.6, 0.7], rtol=1e-6)


# ------------------------------------------------- JAX: compiled kernels kept on disk

_COMPILE_AND_COUNT = """
import jax, keras, numpy as np
from robust.attacks import PGD
from robust.backend import jax as backend_jax
hits = []
jax.monitoring.register_event_listener(lambda event, **kw: hits.append(event) if event.endswith("cache_hits") else None)
keras.utils.set_random_seed(0)
inputs = keras.Input((28, 28, 1))
model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(inputs)))
x = np.random.default_rng(0).random((20, 28, 28, 1), dtype=np.float32)
PGD(eps=0.1, steps=3)(model, x, np.arange(20) % 10, progress=False)
print("CACHE", backend_jax.COMPILATION_CACHE, "HITS", len(hits))
"""


@pytest.mark.skipif(not installed("jax"), reason="backend not installed: jax (pip install -e '.[jax]')")
def test_jax_keeps_compiled_kernels_on_disk_for_the_next_process(tmp_path):
    """The second process attacking a model of the same shapes loads its kernels; ROBUST_JAX_CACHE=off keeps none."""
    def run(cache: str, code: str = _COMPILE_AND_COUNT) -> list[str]:
        env = dict(os.environ, KERAS_BACKEND="jax", ROBUST_JAX_CACHE=cache)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout.split("CACHE ")[-1].split()

    folder = tmp_path / "cache"
    assert run(str(folder)) == [str(folder), "HITS", "0"]
    assert any(folder.iterdir())
    second = run(str(folder))
    assert second[:2] == [str(folder), "HITS"] and int(second[2]) > 0
    assert run("off", "from robust.backend import jax as b; print('CACHE', b.COMPILATION_CACHE)") == ["None"]
