"""Reading a run folder's ``results.json`` and arrays for the report, checked against their schema first.

``robust report`` may be pointed at a folder whose files were edited, copied
half-way or written by another version. Everything the report reads is
checked here, before any figure is drawn: a structural mistake is one
:class:`~robust.RobustError` naming the key (``models['lenet-5'].params``), what
was expected and what was received, never an AttributeError half-way through
the figures.
"""

from __future__ import annotations

import json
import math
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from robust.errors import RobustError

RESULTS_SCHEMA = "robust.results/1"

Check = Callable[[Any, str], None]


class _Bad(Exception):
    """One structural mistake: where, what was expected, what was received."""

    def __init__(self, where: str, expected: str, got: Any):
        super().__init__(where)
        self.where, self.expected, self.got = where, expected, got


_MISSING = object()


def _received(value: Any) -> str:
    if value is _MISSING:
        return "nothing (the key is missing)"
    text = json.dumps(value, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _type(expected: str, test: Callable[[Any], bool], optional: bool = False) -> Check:
    def check(value, where):
        if not ((optional and value is None) or test(value)):
            raise _Bad(where, expected + (" or null" if optional else ""), value)
    return check


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


STR = _type("a string", lambda v: isinstance(v, str))
NUM = _type("a number", _is_number)
INT = _type("an integer", _is_int)
BOOL = _type("true or false", lambda v: isinstance(v, bool))
OPT_STR = _type("a string", lambda v: isinstance(v, str), optional=True)
OPT_NUM = _type("a number", _is_number, optional=True)
OPT_INT = _type("an integer", _is_int, optional=True)
PROBABILITY = _type("a number in [0, 1]", lambda v: _is_number(v) and (math.isnan(v) or 0 <= v <= 1))
COUNT = _type("an integer >= 0", lambda v: _is_int(v) and v >= 0)
POSITIVE = _type("an integer >= 1", lambda v: _is_int(v) and v >= 1)


def _one_of(*choices) -> Check:
    return _type("one of " + ", ".join(repr(c) for c in choices), lambda v: v in choices)


def _list(item: Check, *, nonempty: bool = False, optional: bool = False) -> Check:
    def check(value, where):
        if optional and value is None:
            return
        if not isinstance(value, list) or (nonempty and not value):
            raise _Bad(where, "a non-empty list" if nonempty else "a list", value)
        for i, v in enumerate(value):
            item(v, f"{where}[{i}]")
    return check


def _obj(fields: dict[str, Check], *, optional: bool = False) -> Check:
    """A JSON object with at least these keys (others are allowed: newer writers may add some)."""
    def check(value, where):
        if optional and value is None:
            return
        if not isinstance(value, dict):
            raise _Bad(where, f"an object with keys {', '.join(fields)}", value)
        for key, field in fields.items():
            if key not in value:
                raise _Bad(f"{where}.{key}" if where else key, "present", _MISSING)
            field(value[key], f"{where}.{key}" if where else key)
    return check


def _map(item: Check, *, nonempty: bool = False) -> Check:
    def check(value, where):
        if not isinstance(value, dict) or (nonempty and not value):
            raise _Bad(where, "a non-empty object" if nonempty else "an object", value)
        for key, v in value.items():
            item(v, f"{where}[{key!r}]")
    return check


_SUMMARY = _obj({
    "rows": _list(_obj({"name": STR, "type": STR, "output_shape": _list(OPT_INT), "activations": COUNT,
                        "weights": COUNT, "biases": COUNT})),
    "totals": _obj({"activations": COUNT, "bytes_forward": NUM, "bytes_forward_backward": NUM}),
})

_MODEL = _obj({
    "label": STR, "name": STR, "kind": STR, "options": _type("an object", lambda v: isinstance(v, dict),
                                                             optional=True),
    "ref": OPT_STR, "value_range": _list(NUM), "value_range_source": STR,
    "class_names": _list(STR, optional=True), "params": POSITIVE, "test_accuracy": PROBABILITY,
    "epochs": OPT_INT, "train_seconds": OPT_NUM, "summary": _SUMMARY,
    "checks": _list(_obj({"check": STR, "status": _one_of("pass", "warn", "fail"), "detail": STR})),
    "fooling": _list(_obj({"class": COUNT, "confidence": NUM, "steps": COUNT, "reached": BOOL})),
    "arrays": STR,
})

_RECORD = _obj({
    "model": STR, "attack_key": STR, "eps": NUM, "n": POSITIVE, "clean_accuracy": PROBABILITY,
    "adversarial_accuracy": PROBABILITY, "success_rate": OPT_NUM, "mean_perturbation": OPT_NUM,
    "max_perturbation": OPT_NUM, "seconds": NUM,
})

#: What the report reads from results.json (schema robust.results/1); README.md, "Results", lists every key.
RESULTS = _obj({
    "schema": STR, "name": STR, "title": STR,
    "spec": _obj({"source": STR, "attacks": _list(_obj({"name": STR}), nonempty=True),
                  "report": _obj({"example_eps": NUM}), "fooling": _obj({"threshold": NUM})}),
    "run": _obj({"started": STR, "finished": STR, "seconds": NUM, "seed": INT, "device": STR,
                 "versions": _map(OPT_STR),
                 "data": _obj({"dataset": STR, "source": STR, "train_size": COUNT, "test_size_total": COUNT,
                               "attacked": COUNT, "input_shape": _list(POSITIVE), "value_range": _list(NUM),
                               "class_names": _list(STR, nonempty=True)})}),
    "models": _map(_MODEL, nonempty=True),
    "records": _list(_RECORD),
})


def load_results(out: str | Path) -> dict:
    """``out/results.json``, checked against the schema the report reads.

    Raises:
        RobustError: no such file, not JSON, another schema, or a key that is
            missing or of the wrong type (named, with what was expected and received).
    """
    path = Path(out) / "results.json"
    if not path.is_file():
        raise RobustError(f"{out} has no results.json. Expected a folder written by `robust run` "
                          "(run it first, or --resume an interrupted run).")
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RobustError(f"{path} is not valid JSON ({exc}); re-create it with `robust run --resume`.") from None
    if not isinstance(results, dict):
        raise RobustError(f"{path} must hold a JSON object (schema {RESULTS_SCHEMA!r}); received "
                          f"{type(results).__name__ if not isinstance(results, list) else 'a list'}. "
                          "Re-create it with `robust run --resume`.")
    if results.get("schema") != RESULTS_SCHEMA:
        raise RobustError(f"{path} has schema {results.get('schema')!r}; this version of robust renders "
                          f"{RESULTS_SCHEMA!r}.")
    try:
        RESULTS(results, "")
        _check_references(results)
    except _Bad as bad:
        raise RobustError(f"{path} does not match the results schema {RESULTS_SCHEMA!r}: {bad.where} must be "
                          f"{bad.expected}; received {_received(bad.got)}. Re-create it with `robust run --resume` "
                          "(or undo the edit).") from None
    return results


def _check_references(results: dict) -> None:
    """Keys that name files stay inside the run folder; records and fooling classes point at what exists."""
    n_classes = len(results["run"]["data"]["class_names"])
    for key, info in results["models"].items():
        if not key or key in (".", "..") or any(c in key for c in "/\\\0"):
            raise _Bad(f"models[{key!r}]", "a key usable as a file name (no '/', '\\' or '..')", key)
        arrays = PurePosixPath(info["arrays"])
        if arrays.is_absolute() or ".." in arrays.parts or arrays.suffix != ".npz":
            raise _Bad(f"models[{key!r}].arrays", "a .npz path inside the run folder, such as arrays/KEY.npz",
                       info["arrays"])
        for i, f in enumerate(info["fooling"]):
            if f["class"] >= n_classes:
                raise _Bad(f"models[{key!r}].fooling[{i}].class", f"a class index below {n_classes}", f["class"])
    for i, r in enumerate(results["records"]):
        if r["model"] not in results["models"]:
            raise _Bad(f"records[{i}].model", "the key of a model in models", r["model"])


#: name -> (dimensions, dtype kinds) of the arrays behind a model's figures.
_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "example_x": ((4,), "f"), "example_adv": ((4,), "f"), "example_y": ((1,), "iu"),
    "example_clean_pred": ((1,), "iu"), "example_clean_conf": ((1,), "f"), "example_adv_pred": ((1,), "iu"),
    "example_adv_conf": ((1,), "f"), "saliency_x": ((4,), "f"), "saliency_y": ((1,), "iu"),
    "saliency": ((3, 4), "f"), "filters": ((4,), "f"),
}
_FOOLING_ARRAYS: dict[str, tuple[tuple[int, ...], str]] = {
    "fooling_images": ((4,), "f"), "fooling_target": ((1,), "iu"), "fooling_confidence": ((1,), "f"),
    "fooling_steps": ((1,), "iu"), "fooling_reached": ((1,), "bui"),
}
_SAME_LENGTH = (("example_x", "example_adv", "example_y", "example_clean_pred", "example_clean_conf",
                 "example_adv_pred", "example_adv_conf"), ("saliency_x", "saliency_y", "saliency"),
                tuple(_FOOLING_ARRAYS))
_CLASS_ARRAYS = ("example_y", "example_clean_pred", "example_adv_pred", "saliency_y", "fooling_target")


class Arrays(dict):
    """A model's arrays in memory, read like the ``np.load`` result the figures expect (``.files``)."""

    @property
    def files(self) -> list[str]:
        return list(self)


def load_arrays(out: str | Path, key: str, info: dict, n_classes: int) -> Arrays:
    """The arrays behind model ``key``'s figures, checked: names, dimensions, dtypes, lengths and class indices.

    Raises:
        RobustError: a missing, non-.npz or malformed file, naming the array and what is wrong.
    """
    from robust.artifacts import read_npz

    path = Path(out) / info["arrays"]
    if not path.is_file():
        raise RobustError(f"{path} is missing; results.json names it. Re-run with `robust run --resume`.")
    arrays = Arrays(read_npz(path, what="arrays file"))
    wanted = dict(_ARRAYS)
    if any(name in arrays for name in _FOOLING_ARRAYS):
        wanted.update(_FOOLING_ARRAYS)
    for name, (ndims, kinds) in wanted.items():
        a = arrays.get(name)
        if a is None or a.ndim not in ndims or a.dtype.kind not in kinds:
            got = "nothing" if a is None else f"shape {a.shape} of dtype {a.dtype}"
            dims = " or ".join(map(str, ndims))
            raise RobustError(f"{path} is not the arrays file of model {key!r}: array {name!r} must have {dims} "
                              f"dimensions of {_KIND_NAMES[kinds[0]]}; received {got}. Re-create it with "
                              "`robust run --resume` after deleting it.")
    for group in _SAME_LENGTH:
        lengths = {name: len(arrays[name]) for name in group if name in arrays}
        if len(set(lengths.values())) > 1:
            raise RobustError(f"{path}: arrays {', '.join(lengths)} must have one entry per image each; received "
                              f"lengths {', '.join(map(str, lengths.values()))}.")
    if len(arrays["example_x"]) == 0:
        raise RobustError(f"{path}: example_x must hold at least one image (the report shows adversarial "
                          "examples); received none.")
    if arrays["example_adv"].shape != arrays["example_x"].shape:
        raise RobustError(f"{path}: example_adv must have the shape of example_x {arrays['example_x'].shape}; "
                          f"received {arrays['example_adv'].shape}.")
    for name in _CLASS_ARRAYS:
        a = arrays.get(name)
        if a is not None and a.size and (a.min() < 0 or a.max() >= n_classes):
            raise RobustError(f"{path}: {name} must hold class indices in [0, {n_classes - 1}]; received values "
                              f"in [{a.min()}, {a.max()}].")
    return arrays


_KIND_NAMES = {"f": "floats", "i": "integers", "b": "booleans"}
