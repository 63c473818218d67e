"""The study's units of work as frozen, picklable values, and the pure functions that compute them.

A cell names everything it needs (a model file or reference, never a live
model; the data by name and image indices; the attack by name and
parameters; an ascending eps tuple; a seed), so it can run in this process,
in another one (``multiprocessing`` with spawn) or on another machine, and
gives the same rows everywhere. :func:`run_cell` computes; it writes
nothing. :class:`robust.study.Study` plans the cells and alone writes.

Kinds of cell:

* :class:`robust.training.TrainCell` (:func:`robust.training.train_cell`): a model to train;
* :class:`AttackCell`: one model x one attack over an eps tuple -> one row per eps;
* :class:`ExtrasCell`: one model's masking measurements and the arrays behind its figures;
* :class:`TransferCell`: adversarial examples made on one model, evaluated on every model of the study.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
from typing import Any, ClassVar, Sequence

import numpy as np

from robust.errors import RobustError


@dataclasses.dataclass(frozen=True)
class ModelRef:
    """How a cell finds its model: a ``robust train`` folder, a ``.keras`` file, ``module:factory`` or a plugin name."""

    ref: str
    value_range: tuple[float, float] | None = None
    unsafe: bool = False


@dataclasses.dataclass(frozen=True)
class DataRef:
    """The study's data by name: read where the cell runs, the train split cut as the study cuts it."""

    dataset: str
    data_path: str | None
    train_limit: int | None
    seed: int


class StudyCell:
    """What every cell of a study tells an engine, so that none has to guess a cell's kind.

    An engine ships a cell's data and model files to wherever it runs (:mod:`robust.ray_engine`),
    then computes it with a pure function (:func:`run_cell`, :func:`robust.training.train_cell`).
    Every cell is a frozen dataclass deriving from this class.

    Attributes:
        needs_train_split: whether the cell reads the train split (training does; attacks read only
            the test images).
    """

    needs_train_split: ClassVar[bool] = False

    def data_ref(self) -> DataRef:
        """The data the cell reads."""
        return self.data  # type: ignore[attr-defined]  (every cell but TrainCell carries a DataRef)

    def model_refs(self) -> tuple[ModelRef | None, ...]:
        """The models the cell loads, in order (``None`` for a zoo name, which has no file)."""
        return (self.model,)  # type: ignore[attr-defined]

    def with_model_refs(self, refs: Sequence[ModelRef | None]):
        """The same cell loading ``refs`` instead (an engine points them at local copies of the files)."""
        [ref] = refs
        return self if ref is None else dataclasses.replace(self, model=ref)


@dataclasses.dataclass(frozen=True)
class AttackCell(StudyCell):
    """One model under one attack at every eps of an ascending tuple, on the test images ``indices``."""

    model_key: str
    model: ModelRef
    data: DataRef
    attack: str
    attack_key: str
    params: tuple[tuple[str, Any], ...]
    eps: tuple[float, ...]
    indices: tuple[int, ...]
    seed: int
    batch_size: int = 256

    def shards(self, size: int) -> list["AttackCell"]:
        """The same cell over consecutive slices of at most ``size`` images (each keeps the whole eps sweep).

        Image ``i`` draws its random numbers from ``(seed, indices[i])`` and the sweep works per image,
        so :func:`merge_shards` over the shards' :func:`attack_results` gives exactly this cell's rows.
        """
        if size < 1:
            raise RobustError(f"An attack shard holds at least 1 image; received a shard size of {size}.")
        return [dataclasses.replace(self, indices=self.indices[i:i + size]) for i in range(0, len(self.indices), size)]


@dataclasses.dataclass(frozen=True)
class ExtrasCell(StudyCell):
    """One model's gradient-masking measurements and the example, saliency, filter and fooling arrays."""

    model_key: str
    model: ModelRef
    data: DataRef
    indices: tuple[int, ...]
    strongest: str
    strongest_params: tuple[tuple[str, Any], ...]
    example_eps: float
    examples: int
    saliency: int
    fooling: tuple[tuple[str, Any], ...] | None
    seed: int
    check_eps: float | None = None                  # PGD-40 against PGD-100 at this eps (None: not measured)
    pgd_params: tuple[tuple[str, Any], ...] = ()    # the spec's PGD (norm, loss, random start) for that check


@dataclasses.dataclass(frozen=True)
class TransferCell(StudyCell):
    """Adversarial examples made on ``source`` by a white-box attack at ``eps``, evaluated on every model.

    The diagonal of the study's transfer matrix is the source's own white-box accuracy on the same
    images; a model that does worse on examples made on another model than on its own is masking
    its gradient (Athalye et al. 2018).
    """

    source: str
    models: tuple[tuple[str, ModelRef], ...]        # every model of the study (the source among them)
    data: DataRef
    attack: str
    params: tuple[tuple[str, Any], ...]
    eps: float
    indices: tuple[int, ...]
    seed: int

    def model_refs(self) -> tuple[ModelRef | None, ...]:
        return tuple(model for _, model in self.models)

    def with_model_refs(self, refs: Sequence[ModelRef | None]) -> "TransferCell":
        return dataclasses.replace(self, models=tuple((key, model if ref is None else ref)
                                                      for (key, model), ref in zip(self.models, refs)))


@dataclasses.dataclass(frozen=True)
class CellResult:
    """What :func:`run_cell` returns: record rows (attack cells), checks and arrays (extras cells), transfer."""

    rows: list[dict]
    checks: dict | None = None
    arrays: dict[str, np.ndarray] | None = None
    transfer: dict | None = None


def run_cell(cell: AttackCell | ExtrasCell | TransferCell) -> CellResult:
    """Compute a cell; a pure function of it (the same rows in any process)."""
    if isinstance(cell, AttackCell):
        return merge_shards(cell, [attack_results(cell)])
    if isinstance(cell, ExtrasCell):
        checks, arrays = _extras(cell)
        return CellResult(rows=[], checks=checks, arrays=arrays)
    if isinstance(cell, TransferCell):
        return CellResult(rows=[], transfer=_transfer(cell))
    raise RobustError(f"run_cell expects an AttackCell, ExtrasCell or TransferCell; received {type(cell).__name__}.")


# ------------------------------------------------------------------- loading

#: Datasets handed to this process by an engine (``DataRef`` -> Dataset), read before any file.
_PROVIDED: dict = {}


def provide_data(ref: DataRef, dataset) -> None:
    """Make :func:`study_data` return ``dataset`` for ``ref`` in this process (a worker given the data).

    An engine that ships the study's data to its workers (:mod:`robust.ray_engine`) calls this, so
    no worker reads or downloads the dataset itself.
    """
    _PROVIDED[ref] = dataset


def study_data(dataset: str, data_path: str | None, *, train_limit: int | None, seed: int):
    """The dataset as the study uses it: loaded once per process, the train split cut to ``train_limit``."""
    provided = _PROVIDED.get(DataRef(dataset, data_path, train_limit, seed))
    if provided is not None:
        return provided
    return _load_study_data(dataset, data_path, train_limit, seed)


@functools.lru_cache(maxsize=4)
def _load_study_data(dataset: str, data_path: str | None, train_limit: int | None, seed: int):
    from robust.data import balanced_indices, load_dataset

    ds = load_dataset(dataset, data_path)
    if train_limit:
        idx = balanced_indices(ds.y_train, train_limit, seed)
        ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx],
                                 source=f"{ds.source} (train subset {len(idx)}, seed {seed})")
    return ds


def load_ref(model: ModelRef):
    """The loaded model of a reference, once per process and file version (see :func:`robust.plugins.load_model_ref`)."""
    path = model.ref
    stamp = os.stat(path).st_mtime_ns if os.path.exists(path) else None
    return _load(model, stamp)


@functools.lru_cache(maxsize=8)
def _load(model: ModelRef, stamp):
    from robust.plugins import load_model_ref

    return load_model_ref(model.ref, value_range=model.value_range, unsafe=model.unsafe)


def _predict_logits(model, x: np.ndarray) -> np.ndarray:
    """The model's logits on ``x`` from the attacks' compiled forward pass (one per model and image shape).

    ``model.predict`` builds a ``tf.function`` per model from the same code, and a study's many
    models made TensorFlow warn about "retracing" in the transfer cells.
    """
    from robust.attacks.compaction import clean_logits
    from robust.gradients import model_logits

    return clean_logits(model, model_logits(model, x), x, batch_size=256)


def describe_ready(loaded, dataset) -> dict:
    """The card of a ready model (one robust did not train): its accuracy on the whole test split."""
    from robust.data import scale_to
    from robust.models import check_model_input, count_params

    model = loaded.model
    check_model_input(model, dataset.input_shape, data_name=f"the {dataset.name} data")
    lo, hi = loaded.value_range
    logits = _predict_logits(model, scale_to(dataset.x_test, (lo, hi)))
    return {"model": loaded.name, "source": loaded.source, "value_range": [lo, hi],
            "value_range_source": loaded.value_range_source, "params": count_params(model),
            "test_accuracy": float(np.mean(logits.argmax(1) == dataset.y_test)), "epochs": None,
            "seconds": None, "outputs": loaded.outputs,
            "class_names": list(loaded.class_names) if loaded.class_names else None}


def _test_images(cell) -> tuple[np.ndarray, np.ndarray, Any, tuple[float, float]]:
    """The cell's test images in its model's value range, their labels, the model and that range."""
    from robust.data import scale_to

    ds = study_data(cell.data.dataset, cell.data.data_path, train_limit=cell.data.train_limit, seed=cell.data.seed)
    idx = np.asarray(cell.indices, dtype=np.int64)
    loaded = load_ref(cell.model)
    value_range = tuple(float(v) for v in loaded.value_range)
    return scale_to(ds.x_test[idx], value_range), ds.y_test[idx], loaded.model, value_range


# ------------------------------------------------------------------- attacks

def attack_results(cell: AttackCell) -> list:
    """The cell's sweep as one :class:`~robust.attacks.AttackResult` per eps (ascending), images dropped.

    The adversarial images are left out (``x_adv`` has no columns): the rows need only the
    per-image predictions and perturbation sizes, and shards travel back to a driver lighter.
    """
    from robust.evaluation import evaluate_attack

    x, y, model, value_range = _test_images(cell)
    results = []
    evaluate_attack(model, cell.attack, x, y, list(cell.eps), value_range=value_range, seed=cell.seed,
                    batch_size=cell.batch_size, indices=np.asarray(cell.indices),
                    on_result=lambda r: results.append(dataclasses.replace(r, x_adv=np.zeros((len(r.labels), 0),
                                                                                           np.float32))),
                    **dict(cell.params))
    return results


def merge_shards(cell: AttackCell, parts: list[list]) -> CellResult:
    """The cell's rows from its shards' :func:`attack_results`, in shard order (one part: the whole cell)."""
    from robust.attacks import AttackResult
    from robust.evaluation import summarize

    rows = [summarize(AttackResult.concatenate(per_eps)) for per_eps in zip(*parts)]
    return CellResult(rows=[{"model": cell.model_key, "attack_key": cell.attack_key, **row} for row in rows])


# -------------------------------------------------------------------- extras

def _extras(cell: ExtrasCell) -> tuple[dict, dict[str, np.ndarray]]:
    """The masking measurements and the arrays behind the model's figures (in [0, 1] for display)."""
    from robust.attacks import get_attack
    from robust.checks import gradient_checks
    from robust.gradients import saliency_map
    from robust.report import figures

    x, y, model, (lo, hi) = _test_images(cell)
    params = dict(cell.strongest_params)
    checks = gradient_checks(model, x, y, value_range=(lo, hi), seed=cell.seed,
                             attack_params=params if cell.strongest == "pgd" else dict(cell.pgd_params),
                             check_eps=cell.check_eps)
    checks["value_range_conflict"] = range_conflict(model, (lo, hi))
    k, s = min(cell.examples, len(x)), min(cell.saliency, len(x))
    ex = get_attack(cell.strongest, eps=float(cell.example_eps), seed=cell.seed, **params)(
        model, x[:k], y[:k], value_range=(lo, hi), indices=np.asarray(cell.indices[:k]))
    arrays = {
        **figures.example_arrays(x[:k], ex, (lo, hi), k, successes_first=False),
        "saliency_x": (x[:s] - lo) / (hi - lo), "saliency_y": y[:s],
        "saliency": saliency_map(model, x[:s], y[:s], value_range=(lo, hi)),
        "filters": first_layer_filters(model, x.shape[1:]),
    }
    if cell.fooling is not None:
        arrays.update(figures.fooling_arrays(_fooling(model, dict(cell.fooling), (lo, hi), cell.seed), (lo, hi)))
    from robust.visualize import report_arrays

    # "What the network learned": a few layers, a few units each.
    arrays.update(report_arrays(model, x, value_range=(lo, hi), seed=cell.seed))
    return checks, arrays


def range_conflict(model, value_range) -> str | None:
    """A sentence when the range the model is attacked in contradicts its own leading Rescaling layer, else None."""
    from robust.plugins import infer_value_range

    guess, why = infer_value_range(model)
    lo, hi = value_range
    if guess is None or np.allclose(guess, (lo, hi)):
        return None
    return (f"attacked with inputs in [{lo:g}, {hi:g}] (its card or metadata), but its {why} takes "
            f"[{guess[0]:g}, {guess[1]:g}]: every eps and clip is off by a factor of "
            f"{(guess[1] - guess[0]) / (hi - lo):g}")


def _transfer(cell: TransferCell) -> dict:
    """Each model's accuracy on the adversarial examples made on ``cell.source``.

    Eps is in the source's value range, as every eps of a study; the images travel between
    models in [0, 1] and are mapped into each target's range.
    """
    from robust.attacks import get_attack
    from robust.data import scale_to

    models = dict(cell.models)
    source = types.SimpleNamespace(model=models[cell.source], data=cell.data, indices=cell.indices)
    x, y, model, (lo, hi) = _test_images(source)
    attack = get_attack(cell.attack, eps=cell.eps, seed=cell.seed, **dict(cell.params))
    made = attack(model, x, y, value_range=(lo, hi), indices=np.asarray(cell.indices), progress=False)
    unit = (made.x_adv - lo) / (hi - lo)
    accuracy = {}
    for key, ref in cell.models:
        loaded = load_ref(ref)
        target_range = tuple(float(v) for v in loaded.value_range)
        logits = _predict_logits(loaded.model, scale_to(unit, target_range))
        accuracy[key] = float(np.mean(logits.argmax(1) == y))
    return {"source": cell.source, "attack": cell.attack, "eps": cell.eps, "n": int(len(y)), "accuracy": accuracy}


def _fooling(model, f: dict, value_range, seed: int):
    from robust.attacks import FoolingImages

    fool = FoolingImages(threshold=float(f["threshold"]), max_steps=int(f["max_steps"]),
                         **({"step_size": f["step_size"]} if f["step_size"] else {}),
                         l2_decay=float(f["l2_decay"]), blur_every=int(f["blur_every"]),
                         jitter=int(f["jitter"]), seed=seed)
    classes = None if f["classes"] == "all" else list(f["classes"])
    return fool(model, classes=classes, seeds=int(f["seeds"]), value_range=value_range)


def first_layer_filters(model, input_shape) -> np.ndarray:
    """The first layer's weights as images: conv kernels (k, k, C) or dense weight templates (H, W, C).

    Returns up to 16 arrays, each scaled to [0, 1], shape (n, h, w, C).
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            kernel = np.asarray(layer.kernel)                  # (kh, kw, cin, cout)
            f = np.moveaxis(kernel, -1, 0)[:16]
            break
        if isinstance(layer, keras.layers.Dense):
            kernel = np.asarray(layer.kernel)                  # (inputs, units)
            if kernel.shape[0] != int(np.prod(input_shape)):
                return np.zeros((0, 1, 1, 1), np.float32)
            f = kernel.T[:16].reshape(-1, *input_shape)
            break
    else:
        return np.zeros((0, 1, 1, 1), np.float32)
    lo = f.min(axis=(1, 2, 3), keepdims=True)
    hi = f.max(axis=(1, 2, 3), keepdims=True)
    return ((f - lo) / np.maximum(hi - lo, 1e-12)).astype(np.float32)
