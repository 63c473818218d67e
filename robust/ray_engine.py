"""The Ray engine: a study's cells as Ray tasks on a cluster, results back to the driver, which alone writes.

``robust run SPEC --ray [ADDRESS]`` and ``robust eval ... --ray`` hand
:class:`RayMapper` to :class:`robust.study.Study` as its ``mapper``: the
study plans, resumes and writes exactly as in-process; only where the pure
cell functions run changes.

* A model to train (:class:`robust.training.TrainCell`) is one task; it
  requests a GPU where the cluster has GPUs.
* An attack cell (one model x one attack over the eps sweep) is one task per
  shard of test images; each shard keeps the whole sweep, since later eps
  reuse what earlier ones broke. Image ``i`` draws its random numbers from
  ``(seed, index of i)``, so the merged shards give exactly the unsharded rows
  (:func:`robust.cells.merge_shards`).
* The data and model files travel through Ray's object store: the driver
  puts each once, a worker writes a model file into its temp folder (keyed by
  content) and receives the data in memory, so no worker reads the driver's
  disk or downloads anything. Models named by ``module:factory`` or a plugin
  name are code: they must be installed on the workers.
* Or, with a spec's ``[ray] shared = "/mnt/share/robust"`` (a folder every node
  mounts at the same path), through shared storage: the driver writes the data
  (``.npy`` arrays) and each model's files there once, in folders named by their
  content (reused by later runs, safe to delete between runs), and workers
  read them from there (the arrays memory-mapped).
* Connecting submits one warm-up task per CPU (up to 64, CPU clusters only),
  so workers import TensorFlow while the driver loads the data; later tasks
  reuse those workers.
* A worker that dies has its task retried by Ray (``max_retries``); errors
  raised by the cell itself (bad input) are not retried and reach the driver.

Ray is imported only here, and only when ``--ray`` is given.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from robust.errors import RobustError

#: Test images per attack task: a shard big enough that loading the model and compiling the attack
#: in a worker stay small beside the attack itself.
DEFAULT_SHARD_SIZE = 1000
#: How often Ray reruns a task whose worker died (a crash, the out-of-memory killer, a lost node).
MAX_RETRIES = 3
#: At most this many warm-up tasks (one per CPU) when connecting.
MAX_WARM_UP = 64
#: The folder under ``[ray] shared`` that holds the shipped data and model files.
SHARED_FOLDER = "robust-ray"
_SPLITS = ("x_train", "y_train", "x_test", "y_test")

_INSTALL = 'pip install "robust[ray]"'


def _import_ray():
    try:
        import ray
    except ImportError as exc:
        raise RobustError(
            f"--ray needs Ray, which is not installed here ({exc}). Install it with {_INSTALL} (or pip install "
            "ray) into this environment, on every machine of the cluster, or run without --ray to compute "
            "everything in this process."
        ) from None
    return ray


@dataclasses.dataclass
class RayMapper:
    """A study mapper that computes cells as Ray tasks; use as a context manager (connects, then disconnects).

    Attributes:
        address: a running cluster's address (``host:port`` or ``ray://host:port``); ``None``:
            ``RAY_ADDRESS`` if it is set, else a new local Ray on this machine.
        shard_size: test images per attack task.
        max_retries: reruns of a task whose worker died.
        num_cpus: CPUs of a new local Ray (default: all of this machine's).
        shared: a folder on storage that every node mounts at the same path (a spec's ``[ray]
            shared``): data and model files go there instead of the object store. See :meth:`use_shared`.
    """

    address: str | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    max_retries: int = MAX_RETRIES
    num_cpus: int | None = None
    shared: str | None = None

    def __post_init__(self):
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise RobustError(f"The Ray shard size is a number of test images, at least 1; received "
                              f"{self.shard_size!r}.")
        _import_ray()  # not installed: said now, before the study loads anything
        self._shipped: dict = {}
        self._warming: list = []
        self._connected = False
        if self.shared is not None:
            self.use_shared(self.shared)

    def use_shared(self, path: str) -> None:
        """Ship data and model files through the folder ``path`` instead of the object store.

        Checked here, on the driver, before anything runs: ``path`` must be an existing, writable
        folder (every worker must see it at the same path; a worker that cannot read it fails its
        task with a message naming the path).
        """
        from robust.artifacts import check_writable

        folder = Path(path)
        if not folder.is_absolute() or not folder.is_dir():
            raise RobustError(
                f"[ray] shared must be an existing folder, given by its absolute path, that every node of the Ray "
                f"cluster mounts at the same place; received {path!r}, which "
                f"{'is not an absolute path' if not folder.is_absolute() else 'is not an existing folder here'}. "
                "Mount the shared storage (or create the folder) and name it, or remove [ray] shared to ship the "
                "data and models through Ray's object store."
            )
        check_writable(folder / SHARED_FOLDER, what="[ray] shared")
        self.shared = str(folder)

    # -- connection ----------------------------------------------------------

    def __enter__(self) -> "RayMapper":
        ray = _import_ray()
        target = self.address or os.environ.get("RAY_ADDRESS") or None
        kwargs = {"address": target} if target else {"address": "local", "num_cpus": self.num_cpus,
                                                     "include_dashboard": False}
        try:
            if target:
                _reachable(target)  # Ray itself keeps retrying an address nobody listens on for minutes
            with _quiet_token_notice():
                # Workers' output (TensorFlow's start-up lines) stays in Ray's logs; a failing cell's error
                # comes back to the driver as an exception.
                ray.init(**kwargs, log_to_driver=False, configure_logging=False)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError for a bad address
            raise _connect_error(exc, target, from_env=bool(target and not self.address)) from None
        self._connected = True
        if not ray.cluster_resources().get("GPU"):  # a GPU task gets a fresh worker anyway
            cpus = int(ray.cluster_resources().get("CPU", 1))
            warm = ray.remote(_warm_up).options(num_cpus=1, max_retries=0)
            self._warming = [warm.remote() for _ in range(max(1, min(cpus, MAX_WARM_UP)))]
        return self

    def __exit__(self, *exc) -> None:
        if self._connected:
            _import_ray().shutdown()
            self._connected = False
            self._shipped.clear()
            self._warming.clear()

    def facts(self) -> dict:
        """What the report's run facts say: the engine and the cluster's nodes, CPUs and GPUs."""
        ray = _import_ray()
        resources = ray.cluster_resources()
        cluster = {"version": ray.__version__, "nodes": sum(1 for n in ray.nodes() if n.get("Alive")),
                   "cpus": int(resources.get("CPU", 0)), "gpus": int(resources.get("GPU", 0))}
        line = (f"Ray {cluster['version']}: {cluster['nodes']} node{'s' * (cluster['nodes'] != 1)}, "
                f"{cluster['cpus']} CPUs, {cluster['gpus']} GPUs")
        return {"engine": line, "ray": cluster}

    # -- mapping ---------------------------------------------------------------

    def __call__(self, fn: Callable, cells: list) -> Iterator[tuple]:
        """Yield ``(i, fn(cells[i]))`` as cells finish on the cluster (the study's mapper contract)."""
        from robust.cells import AttackCell, attack_results, merge_shards, run_cell

        ray = _import_ray()
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(_run_task).options(num_gpus=gpus, max_retries=self.max_retries, retry_exceptions=False)
        pending, parts = {}, {}
        sharded = {i for i, cell in enumerate(cells) if fn is run_cell and isinstance(cell, AttackCell)}
        for i, cell in enumerate(cells):
            units = [(s, attack_results) for s in cell.shards(self.shard_size)] if i in sharded else [(cell, fn)]
            parts[i] = [None] * len(units)
            for j, (unit, unit_fn) in enumerate(units):
                data, models = self._ship(unit)
                pending[task.remote(unit_fn, unit, data, *models)] = (i, j)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i, j = pending.pop(done[0])
            parts[i][j] = _get(ray, done[0])
            if all(p is not None for p in parts[i]):
                got = parts.pop(i)
                yield i, merge_shards(cells[i], got) if i in sharded else got[0]

    def _ship(self, cell) -> tuple:
        """The cell's data and model files as object-store references (or paths under ``shared``), each once."""
        from robust.cells import ModelRef, study_data

        ray = _import_ray()
        shared = Path(self.shared) / SHARED_FOLDER if self.shared else None
        ref = cell.data_ref()
        training = cell.needs_train_split  # attack cells need only the test split
        key = ("data", ref, training)
        if key not in self._shipped:
            ds = study_data(ref.dataset, ref.data_path, train_limit=ref.train_limit, seed=ref.seed)
            if not training:
                ds = dataclasses.replace(ds, x_train=ds.x_train[:0], y_train=ds.y_train[:0])
            self._shipped[key] = _share_data(shared, ds) if shared else ray.put(ds)
        files = []
        for model in cell.model_refs():  # a TrainCell's model is a zoo name: nothing to ship
            if not (isinstance(model, ModelRef) and os.path.exists(model.ref)):
                files.append(None)
                continue
            path = Path(model.ref)
            key = ("model", str(path.resolve()), _stamp(path))
            if key not in self._shipped:
                self._shipped[key] = (str(_materialize(*_model_files(path), root=shared)) if shared
                                      else ray.put(_model_files(path)))
            files.append(self._shipped[key])
        return self._shipped[("data", ref, training)], files


def _get(ray, ref):
    """A task's result; an error the cell raised (bad input) comes back as itself, not wrapped by Ray."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RobustError):
            raise RobustError(str(cause)) from None
        raise


@contextlib.contextmanager
def _quiet_token_notice():
    """Keep Ray's notice that it turned on token authentication (a new local Ray) off our output.

    Only that logger's warnings are dropped; its errors, and every other Ray message, still show.
    """
    notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
    level = notice.level
    notice.setLevel(logging.ERROR)
    try:
        yield
    finally:
        notice.setLevel(level)


def _connect_error(exc: Exception, target: str | None, *, from_env: bool) -> RobustError:
    """The paragraph for a failed ``ray.init``: where, why, and the fix (token authentication named)."""
    where = f"the Ray cluster at {target}" if target else "a new local Ray"
    source = " (from RAY_ADDRESS)" if from_env else ""
    text = (f"--ray: could not connect to {where}{source}: {type(exc).__name__}: {_first_line(exc)}. "
            "Expected the address of a running cluster's head node, as `ray start --head` prints it "
            "(host:6379, or ray://host:10001 for Ray Client): start the cluster or correct the address, "
            "or give --ray without an address (and without RAY_ADDRESS) to start a local Ray.")
    if "auth" in f"{type(exc).__name__} {exc}".lower():
        text += (" The cluster refused this driver's authentication: a cluster started with token "
                 "authentication (on by default when ~/.ray/auth_token exists where it was started) needs "
                 "RAY_AUTH_MODE=token and its token here (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or "
                 "~/.ray/auth_token; `ray get-auth-token` on the head prints it).")
    return RobustError(text)


def _reachable(address: str, timeout: float = 5.0) -> None:
    """Raise ConnectionError unless something accepts TCP connections at ``host:port`` (``ray://`` or not)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        if address == "auto":
            return  # Ray finds the cluster this machine belongs to
        raise ValueError(f"{address!r} is not host:port")
    with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
        pass


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no message"


def _stamp(path: Path) -> tuple:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    return tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


def _model_files(path: Path) -> tuple[str, dict[str, bytes]]:
    """A model file (``.keras``) or a ``robust train`` folder's files, as bytes for the object store."""
    if path.is_file():
        return "file", {path.name: path.read_bytes()}
    return "folder", {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


def _share_data(root: Path, ds) -> str:
    """Write a dataset under ``root`` once (a folder named by its content: .npy arrays + meta.json)."""
    meta = {"name": ds.name, "class_names": list(ds.class_names), "source": ds.source,
            "value_range": [float(v) for v in ds.value_range]}
    digest = hashlib.sha256(json.dumps(meta, sort_keys=True).encode())
    for name in _SPLITS:
        array = getattr(ds, name)
        digest.update(f"{name}{array.dtype.str}{array.shape}".encode())
        digest.update(np.ascontiguousarray(array).tobytes() if array.size else b"")

    def write(staging: Path) -> None:
        for name in _SPLITS:
            np.save(staging / f"{name}.npy", getattr(ds, name), allow_pickle=False)
        (staging / "meta.json").write_text(json.dumps(meta))

    return str(_publish(root / f"data-{digest.hexdigest()[:20]}", write))


def _publish(folder: Path, write: Callable[[Path], None]) -> Path:
    """``folder`` filled by ``write`` in a staging folder renamed into place (a racing writer's copy wins)."""
    if folder.is_dir():
        return folder
    staging = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".incoming-"))
        write(staging)
        os.rename(staging, folder)  # atomic; fails if another process renamed its copy first
    except OSError as exc:
        if not folder.is_dir():
            raise RobustError(f"Could not write {folder} for the Ray workers: {exc.strerror or exc}. Expected a "
                              "writable folder with free space ([ray] shared, or the temp folder of a worker "
                              "machine); free some space or choose another folder.") from None
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


# ---------------------------------------------------------------- on a worker

def _warm_up() -> None:
    """Import what every cell needs (TensorFlow and Keras among it), so a worker is ready before its first cell."""
    import robust.attacks  # noqa: F401
    import robust.cells  # noqa: F401
    import robust.training  # noqa: F401


def _read_shared_data(path: str):
    """The dataset :func:`_share_data` wrote at ``path``, its arrays memory-mapped (read-only)."""
    from robust.data import Dataset

    folder = Path(path)
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {name: np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False) for name in _SPLITS}
    except OSError as exc:
        raise RobustError(
            f"A Ray worker could not read the study's data from the shared storage ([ray] shared) at {folder}: "
            f"{exc.strerror or exc}. Expected every node to mount that folder at the same path as the driver; "
            "mount it there, or remove [ray] shared to ship the data through Ray's object store."
        ) from None
    return Dataset(name=meta["name"], **arrays, class_names=tuple(meta["class_names"]), source=meta["source"],
                   value_range=tuple(meta["value_range"]))


def _run_task(fn: Callable, cell, dataset, *model_files: tuple | None):
    """What a Ray task runs: take the shipped data and model files, then compute the pure cell function.

    ``dataset`` and ``model_files`` (one per model of ``cell.model_refs()``, None for a zoo name) arrive
    as top-level arguments, so Ray hands over the values behind the driver's object references
    (numpy arrays without a copy on the worker's machine). With shared storage they are paths:
    the data's folder and each model's file or folder there.
    """
    from robust.cells import provide_data

    provide_data(cell.data_ref(), _read_shared_data(dataset) if isinstance(dataset, str) else dataset)
    local = [files if files is None or isinstance(files, str) else str(_materialize(*files))
             for files in model_files]
    refs = [None if path is None else dataclasses.replace(model, ref=path)
            for model, path in zip(cell.model_refs(), local)]
    return fn(cell.with_model_refs(refs))


def _materialize(kind: str, files: dict[str, bytes], root: Path | None = None) -> Path:
    """Model files written once in a folder named by their content: under ``root`` (the driver, shared
    storage) or this worker machine's temp folder (shipped through the object store)."""
    digest = hashlib.sha256()
    for name, blob in sorted(files.items()):
        digest.update(name.encode() + b"\0" + hashlib.sha256(blob).digest())
    root = Path(tempfile.gettempdir()) / "robust-ray-models" if root is None else root

    def write(staging: Path) -> None:
        for file, blob in files.items():
            (staging / file).write_bytes(blob)

    folder = _publish(root / f"model-{digest.hexdigest()[:20]}", write)
    return folder / next(iter(files)) if kind == "file" else folder
