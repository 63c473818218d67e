"""`robust run --ray`: a tiny study on a real local Ray cluster of 2 CPUs gives the in-process results.

One Ray head (`ray start --head --block`, 2 CPUs) serves the whole module and is
stopped through its own process at the end. Its workers get a data folder that
does not exist, so a worker that read or downloaded data instead of taking it
from the object store (or the spec's shared folder) would fail or compute other numbers.

Ray's authentication state is the module's own: the head runs with a HOME of
its own (holding a deliberately wrong ~/.ray/auth_token) and, like every driver
here, with RAY_AUTH_MODE=disabled, so whatever the user's ~/.ray or environment
holds cannot make the head refuse the drivers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from robust.cli import main
from robust.study import strip_wall_clock

HAS_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAS_RAY, reason='Ray is not installed: pip install -e ".[ray]" enables these tests')

TINY = """
name = "tiny-ray"
seed = 0

[data]
dataset = "mnist"
train_limit = 2000
test_limit = 100

[training]
epochs = 1
batch_size = 64
lr = 0.003

[[models]]
name = "lenet5"

[[models]]
name = "mlp"
label = "MLP 32"
options = { depth = 1, width = 32 }

[[attacks]]
name = "fgsm"

[[attacks]]
name = "pgd"
steps = 10

[eps]
values = [0.0, 0.1, 0.3]

[fooling]
classes = [3]
max_steps = 30

[report]
examples = 2
saliency = 2
"""
RECORDS = 2 * 2 * 3


@pytest.fixture(scope="module")
def spec_file(tmp_path_factory, data_dir):
    path = tmp_path_factory.mktemp("spec") / "tiny.toml"
    path.write_text(TINY)
    return path


@pytest.fixture(scope="module")
def in_process(spec_file, tmp_path_factory):
    """The reference: the tiny study in this process, without Ray (which it must not import)."""
    out = tmp_path_factory.mktemp("local") / "run"
    before = "ray" in sys.modules
    res = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert before or "ray" not in sys.modules, "a run without --ray imported Ray"
    return out


#: Token authentication off for the module's head and drivers, and no token or address from outside.
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_AUTH_TOKEN": None, "RAY_AUTH_TOKEN_PATH": None, "RAY_ADDRESS": None}


@pytest.fixture(scope="module", autouse=True)
def ray_auth_env():
    """This process (the in-process drivers) and the drivers it starts connect without a token.

    Ray reads RAY_AUTH_MODE when it is imported, which happens in the first --ray run below.
    """
    with pytest.MonkeyPatch.context() as mp:
        for key, value in RAY_ENV.items():
            mp.delenv(key, raising=False) if value is None else mp.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The address of a local Ray head with 2 CPUs, started once for the module and stopped by its pid."""
    if not HAS_RAY:
        pytest.skip('Ray is not installed: pip install -e ".[ray]" enables these tests')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = Path(f"/tmp/rr{os.getpid()}")  # short: Ray's socket paths must stay under 108 characters
    home = temp / "home"  # a stale token where `ray start` looks first: RAY_AUTH_MODE=disabled must win
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("stale-token-from-another-cluster")
    env = {k: v for k, v in os.environ.items() if k not in RAY_ENV}
    env.update(HOME=str(home), RAY_AUTH_MODE="disabled", ROBUST_DATA_DIR=str(temp / "no-data-here"),
               TF_CPP_MIN_LOG_LEVEL="3")
    ray_cli = str(Path(sys.executable).with_name("ray"))
    head = subprocess.Popen([ray_cli, "start", "--head", "--block", "--num-cpus=2", "--num-gpus=0",
                             f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}",
                             "--object-store-memory=400000000", "--disable-usage-stats"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline and head.poll() is None:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.5)
    assert head.poll() is None, "ray start --head exited"
    yield address
    os.killpg(head.pid, signal.SIGTERM)  # the head's own process group: ray start and what it started
    try:
        head.wait(2)  # nothing of the module's work is left to save: a slow shutdown is only waiting
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
    shutil.rmtree(temp, ignore_errors=True)


def _results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _same_study(out: Path, reference: Path) -> None:
    """Equal results.json up to wall-clock fields, the engine that computed them and the spec file's name."""
    a, b = strip_wall_clock(_results(out)), strip_wall_clock(_results(reference))
    for r in (a, b):
        r["run"].pop("engine", None), r["run"].pop("ray", None), r["spec"].pop("source")
    assert len(a["records"]) == RECORDS
    assert a["records"] == b["records"]
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "robust.cli", *args]


def _with_models(reference: Path, out: Path) -> None:
    """A run folder that already holds the reference's trained models (reused: same settings)."""
    out.mkdir(parents=True)
    shutil.copytree(reference / "models", out / "models")


@needs_ray
def test_ray_run_gives_the_in_process_results(in_process, spec_file, cluster, tmp_path):
    """Training and attack tasks, attacks in shards, data and models through [ray] shared: the same study.

    100 images in shards of 40: every attack is 3 tasks, merged on the driver; both models train as
    tasks. The driver writes the data and model files to the shared folder once and workers read them
    from there. The object store carries them in the two kill tests below.
    """
    share = tmp_path / "share"
    share.mkdir()
    spec = tmp_path / "shared.toml"
    spec.write_text(spec_file.read_text() + f'\n[ray]\nshared = "{share}"\n')
    out = tmp_path / "ray"
    res = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--no-progress", "--ray", cluster,
                                    "--shard-size", "40"])
    assert res.exit_code == 0, res.output + repr(res.exception)
    assert "Engine: Ray" in res.output and "1 node, 2 CPUs, 0 GPUs" in res.output
    assert "Token authentication" not in res.output and "dashboard" not in res.output.lower()
    _same_study(out, in_process)
    ray_facts = _results(out)["run"]["ray"]
    assert (ray_facts["nodes"], ray_facts["cpus"], ray_facts["gpus"]) == (1, 2, 0)
    assert "engine Ray" in (out / "report.md").read_text()
    assert _results(in_process)["run"]["engine"] == "in-process"
    # The train split for the training tasks, the test split for the others, each model once; nothing half-written.
    shipped = sorted(p.name.split("-")[0] for p in (share / "robust-ray").iterdir())
    assert shipped == ["data", "data", "model", "model"], shipped
    splits = sorted(sorted(p.name for p in d.iterdir()) for d in (share / "robust-ray").glob("data-*"))
    assert all(names == ["meta.json", "x_test.npy", "x_train.npy", "y_test.npy", "y_train.npy"] for names in splits)
    sizes = sorted(np.load(d / "x_train.npy", mmap_mode="r").shape[0] for d in (share / "robust-ray").glob("data-*"))
    assert sizes == [0, 2000], sizes  # the attack tasks get no training images
    assert "ray_shared" not in _results(out)["spec"]  # where the data travels is not part of the study


@needs_ray
def test_a_bad_shared_folder_is_a_clear_error(spec_file, tmp_path):
    """Checked on the driver before anything runs or is written: exit code 2, what was expected and received."""
    for shared, expected in ((str(tmp_path / "not-mounted"), "is not an existing folder here"),
                             ("relative/share", "must be the absolute path of a folder")):
        spec = tmp_path / "bad-shared.toml"
        spec.write_text(spec_file.read_text() + f'\n[ray]\nshared = "{shared}"\n')
        out = tmp_path / "never"
        res = CliRunner().invoke(main, ["run", str(spec), "--out", str(out), "--ray", "127.0.0.1:1"])
        assert res.exit_code == 2, res.output + repr(res.exception)
        assert expected in res.output and repr(shared) in res.output and "Traceback" not in res.output
        assert not out.exists() and not (tmp_path / "not-mounted").exists()


def _ray_task_pids() -> list[int]:
    """Ray workers now running one of our tasks (Ray titles a busy worker ``ray::<function>``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::_run_task"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return pids


@needs_ray
@pytest.mark.slow
def test_a_killed_worker_has_its_task_retried(in_process, spec_file, cluster, tmp_path):
    out = tmp_path / "worker-killed"  # everything through the object store; the task killed may be a training
    driver = subprocess.Popen(_cli("run", str(spec_file), "--out", str(out), "--no-progress", "--ray", cluster,
                                   "--shard-size", "25"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    killed, deadline = None, time.time() + 240
    while killed is None and time.time() < deadline and driver.poll() is None:
        busy = _ray_task_pids()
        if busy:
            time.sleep(1.0)  # let it get well into the task
            if busy[0] in _ray_task_pids():
                os.kill(busy[0], signal.SIGKILL)
                killed = busy[0]
        time.sleep(0.1)
    output, _ = driver.communicate(timeout=600)
    assert killed is not None, "no Ray task was seen running: " + output[-2000:]
    assert driver.returncode == 0, output[-3000:]
    assert len(list((out / "records").glob("*eps*.json"))) == RECORDS
    _same_study(out, in_process)


@needs_ray
@pytest.mark.slow
def test_a_killed_driver_resumes_to_the_same_results(in_process, spec_file, cluster, tmp_path):
    out = tmp_path / "driver-killed"
    _with_models(in_process, out)
    cmd = _cli("run", str(spec_file), "--out", str(out), "--no-progress", "--ray", cluster, "--shard-size", "50")
    driver = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and driver.poll() is None:
        if len(list((out / "records").glob("*eps*.json"))) >= 3:
            break
        time.sleep(0.1)
    assert driver.poll() is None, "the run ended before it could be killed"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    assert not (out / "results.json").exists()
    done = len(list((out / "records").glob("*eps*.json")))
    res = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"Resuming: {done} of {RECORDS} attack results already done" in res.stdout
    _same_study(out, in_process)


def test_ray_missing_is_a_clear_error(spec_file, tmp_path, monkeypatch):
    """Ray not installed (its import blocked): one paragraph naming the fix, exit code 2, nothing written."""
    out = tmp_path / "no-ray"
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without Ray
    res = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(out), "--ray"])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert 'pip install "robust[ray]"' in res.output and "Traceback" not in res.output
    assert not out.exists() or not any(out.iterdir())


@needs_ray
def test_an_unreachable_address_is_a_clear_error(spec_file, tmp_path):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "nowhere"
    res = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(out), "--ray", f"127.0.0.1:{port}"])
    assert res.exit_code == 2, res.output + repr(res.exception)
    assert f"could not connect to the Ray cluster at 127.0.0.1:{port}" in res.output
    assert "ray start --head" in res.output
    assert not out.exists() or not any(out.iterdir())


def test_shard_size_without_ray_and_a_spec_after_ray_are_refused(spec_file, tmp_path):
    res = CliRunner().invoke(main, ["run", str(spec_file), "--out", str(tmp_path / "a"), "--shard-size", "10"])
    assert res.exit_code == 2 and "needs --ray" in res.output
    res = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "b"), "--ray", str(spec_file)])
    assert res.exit_code == 2 and "put the spec before --ray" in res.output


def test_shards_merge_to_exactly_the_whole_cell(trained_lenet, tmp_path, data_dir):
    """Without Ray: what the engine does with an attack cell (shards, then merge) equals the cell in one piece."""
    from robust.cells import AttackCell, DataRef, ModelRef, attack_results, merge_shards, run_cell

    path = tmp_path / "lenet.keras"
    trained_lenet.save(path)
    cell = AttackCell(model_key="lenet", model=ModelRef(str(path)), data=DataRef("mnist", None, None, 0),
                      attack="pgd", attack_key="pgd", params=(("steps", 5),), eps=(0.0, 0.05, 0.1, 0.3),
                      indices=tuple(range(0, 3000, 25)), seed=7)
    shards = cell.shards(50)
    assert [len(s.indices) for s in shards] == [50, 50, 20]
    whole = [{k: v for k, v in r.items() if k != "seconds"} for r in run_cell(cell).rows]
    merged = [{k: v for k, v in r.items() if k != "seconds"}
              for r in merge_shards(cell, [attack_results(s) for s in shards]).rows]
    assert merged == whole
    assert [r["n"] for r in merged] == [120] * 4
    assert whole[-1]["adversarial_accuracy"] < whole[0]["clean_accuracy"]


def test_shared_storage_round_trip_without_ray(tmp_path):
    """Without Ray: the data written to [ray] shared once, by content, reads back equal and read-only."""
    import numpy as np

    from robust.data import Dataset
    from robust.errors import RobustError
    from robust.ray_engine import SHARED_FOLDER, _materialize, _read_shared_data, _share_data

    rng = np.random.default_rng(0)
    ds = Dataset("mnist", rng.random((6, 28, 28, 1), np.float32), np.arange(6), rng.random((4, 28, 28, 1), np.float32),
                 np.arange(4), tuple("0123456789"), "a test")
    root = tmp_path / SHARED_FOLDER
    first, again = _share_data(root, ds), _share_data(root, ds)
    other = _share_data(root, Dataset(**{**ds.__dict__, "x_test": ds.x_test[:2], "y_test": ds.y_test[:2]}))
    assert first == again != other and len(list(root.iterdir())) == 2
    back = _read_shared_data(first)
    assert all(np.array_equal(getattr(back, k), getattr(ds, k)) for k in ("x_train", "y_train", "x_test", "y_test"))
    assert (back.class_names, back.source, back.value_range) == (ds.class_names, ds.source, ds.value_range)
    assert not back.x_test.flags.writeable  # memory-mapped, as the object store's arrays are read-only too
    model = _materialize("folder", {"model.keras": b"weights", "model.json": b"{}"}, root=root)
    assert sorted(p.name for p in model.iterdir()) == ["model.json", "model.keras"] and model.parent == root
    with pytest.raises(RobustError, match="mount it there"):
        _read_shared_data(str(tmp_path / "elsewhere"))
