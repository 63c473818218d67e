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
