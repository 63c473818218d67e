"""Run specs: what a study trains and attacks, read from TOML and validated with clear errors.

A spec names the models (zoo names with options), the dataset, the training
settings, the attacks with their hyper-parameters, the eps grid, the fooling
images and what the report shows. ``robust run`` without a spec runs the
built-in ``mnist`` spec; ``robust run cifar10`` the shipped CIFAR-10 one. See
README.md, "Run specs", for every key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from robust.errors import RobustError, known_names

BUILTIN_SPECS = ("mnist", "cifar10")


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    name: str                     # zoo name (trained by the study), or the ref for a ready model
    label: str                    # display name in the report
    key: str                      # file-safe unique id within the run
    options: dict[str, Any]
    epochs: int
    batch_size: int
    lr: float
    ref: str | None = None        # a ready model (a .keras file, a train folder, module:factory, a plugin
                                  # name): evaluated as it is, never trained
    value_range: tuple[float, float] | None = None  # the ref model's input range, when not in its metadata
    unsafe: bool = False          # allow a .keras file that carries code


@dataclasses.dataclass(frozen=True)
class AttackEntry:
    name: str                     # registered attack name ("fgsm", "pgd", ...)
    key: str                      # unique id within the run, e.g. "pgd" or "pgd-l2"
    params: dict[str, Any]        # constructor hyper-parameters other than eps


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    title: str
    seed: int
    dataset: str
    data_path: str | None
    train_limit: int | None
    test_limit: int | None
    models: tuple[ModelEntry, ...]
    attacks: tuple[AttackEntry, ...]
    eps: tuple[float, ...]
    fooling: dict[str, Any]
    report: dict[str, Any]
    source: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_TOP = {"name", "title", "seed", "data", "training", "models", "attacks", "eps", "fooling", "report"}
_FOOLING_DEFAULTS = {"enabled": True, "classes": "all", "seeds": 1, "threshold": 0.99, "max_steps": 300,
                     "step_size": None, "l2_decay": 0.0, "blur_every": 0, "jitter": 0}
_REPORT_DEFAULTS = {"examples": 8, "example_eps": None, "saliency": 6}


def load_spec(ref: str | Path | None) -> Spec:
    """Read a spec from a TOML file, or a built-in spec by name (default ``mnist``)."""
    if ref is None:
        ref = "mnist"
    path = Path(ref)
    if str(ref) in BUILTIN_SPECS and not path.exists():
        text = (resources.files("robust.specs") / f"{ref}.toml").read_text(encoding="utf-8")
        return parse_spec(text, source=f"built-in spec {ref!r}")
    if not path.is_file():
        raise RobustError(
            f"No run spec at {str(ref)!r}: expected a TOML file or a built-in spec name "
            f"({known_names(BUILTIN_SPECS)}). See README.md, 'Run specs', for the format."
        )
    return parse_spec(path.read_text(encoding="utf-8"), source=str(path))


def _err(source: str, where: str, expected: str, got: Any) -> RobustError:
    return RobustError(f"Spec {source}: {where} must be {expected}; received {got!r}. "
                       "See README.md, 'Run specs', for the format.")


def _table(raw: dict, key: str, source: str) -> dict:
    value = raw.get(key, {})
    if not isinstance(value, dict):
        raise _err(source, f"[{key}]", "a table", value)
    return value


def _check_keys(table: dict, allowed, where: str, source: str) -> None:
    unknown = set(table) - set(allowed)
    if unknown:
        raise RobustError(f"Spec {source}: unknown key {known_names(unknown)} in {where}. "
                          f"Allowed keys: {known_names(allowed)}.")


def _int(value, where, source, minimum=1, optional=False):
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _err(source, where, f"an integer >= {minimum}", value)
    return value


def _number(value, where, source, minimum=0.0):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise _err(source, where, f"a number >= {minimum}", value)
    return float(value)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def parse_spec(text: str, *, source: str = "<string>") -> Spec:
    """Parse and validate spec TOML; every mistake is a RobustError naming the key."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RobustError(f"Spec {source} is not valid TOML: {exc}.") from None
    _check_keys(raw, _TOP, "the top level", source)
    name = raw.get("name", "study")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
        raise _err(source, "name", "a name of letters, digits, '.', '_' or '-' (it names the output folder)", name)
    seed = _int(raw.get("seed", 0), "seed", source, minimum=0)

    data = _table(raw, "data", source)
    _check_keys(data, {"dataset", "path", "train_limit", "test_limit"}, "[data]", source)
    from robust.data import DATASETS

    dataset = data.get("dataset", "mnist")
    if dataset not in DATASETS:
        raise _err(source, "data.dataset", f"one of {known_names(DATASETS)}", dataset)
    path = data.get("path")
    if path is not None and not isinstance(path, str):
        raise _err(source, "data.path", "a file or folder path", path)

    training = _table(raw, "training", source)
    _check_keys(training, {"epochs", "batch_size", "lr"}, "[training]", source)
    epochs = _int(training.get("epochs", 5), "training.epochs", source)
    batch_size = _int(training.get("batch_size", 128), "training.batch_size", source)
    lr = _number(training.get("lr", 1e-3), "training.lr", source, minimum=1e-12)

    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise _err(source, "[[models]]", "at least one model table such as [[models]] name = \"lenet5\"", models_raw)
    from robust.models import get_spec as get_model_spec

    models, keys = [], set()
    for i, m in enumerate(models_raw):
        where = f"models[{i}]"
        if not isinstance(m, dict) or ("name" in m) == ("ref" in m):
            raise _err(source, where, "a table with either name (a zoo model to train) or ref (a ready model)", m)
        _check_keys(m, {"name", "ref", "label", "options", "epochs", "batch_size", "lr", "value_range", "unsafe"},
                    where, source)
        if "ref" in m:
            ref = m["ref"]
            if not isinstance(ref, str) or not ref:
                raise _err(source, f"{where}.ref", "a model reference (file, folder, module:factory or plugin name)", ref)
            vr = m.get("value_range")
            if vr is not None and not (isinstance(vr, list) and len(vr) == 2
                                       and all(isinstance(v, (int, float)) for v in vr) and vr[0] < vr[1]):
                raise _err(source, f"{where}.value_range", "[low, high] with low < high", vr)
            label = str(m.get("label") or ref)
            key = _slug(label)
            if key in keys:
                raise RobustError(f"Spec {source}: {where} repeats model {label!r}.")
            keys.add(key)
            models.append(ModelEntry(name=ref, label=label, key=key, options={}, epochs=0, batch_size=batch_size,
                                     lr=lr, ref=ref, value_range=tuple(vr) if vr else None,
                                     unsafe=bool(m.get("unsafe", False))))
            continue
        get_model_spec(m["name"])  # unknown name: error listing the known ones
        options = m.get("options", {})
        if not isinstance(options, dict):
            raise _err(source, f"{where}.options", "a table of builder options", options)
        label = m.get("label") or (m["name"] + "".join(f" {k}={v}" for k, v in options.items()))
        key = _slug(str(m["label"])) if m.get("label") else _slug(m["name"] + ("-" + _short_hash(options) if options else ""))
        if key in keys:
            raise RobustError(f"Spec {source}: {where} repeats model {m['name']!r} with the same options.")
        keys.add(key)
        models.append(ModelEntry(
            name=m["name"], label=str(label), key=key, options=options,
            epochs=_int(m.get("epochs", epochs), f"{where}.epochs", source),
            batch_size=_int(m.get("batch_size", batch_size), f"{where}.batch_size", source),
            lr=_number(m.get("lr", lr), f"{where}.lr", source, minimum=1e-12),
        ))

    eps_table = _table(raw, "eps", source)
    _check_keys(eps_table, {"values"}, "[eps]", source)
    eps_values = eps_table.get("values", [0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
    if not isinstance(eps_values, list) or not eps_values:
        raise _err(source, "eps.values", "a non-empty list of numbers", eps_values)
    eps = tuple(sorted({_number(e, "eps.values", source) for e in eps_values}))
    widest = max([1.0] + [m.value_range[1] - m.value_range[0] for m in models if m.value_range])
    if eps[-1] > widest:
        raise _err(source, "eps.values", f"numbers in [0, {widest:g}] (the models' input value range)", eps_values)

    attacks_raw = raw.get("attacks", [{"name": "fgsm"}, {"name": "pgd"}])
    if not isinstance(attacks_raw, list) or not attacks_raw:
        raise _err(source, "[[attacks]]", "at least one attack table such as [[attacks]] name = \"pgd\"", attacks_raw)
    attacks, akeys = [], set()
    for i, a in enumerate(attacks_raw):
        where = f"attacks[{i}]"
        if not isinstance(a, dict) or "name" not in a:
            raise _err(source, where, "a table with a name", a)
        params = {k: v for k, v in a.items() if k != "name"}
        if "eps" in params:
            raise RobustError(f"Spec {source}: {where} sets eps; the eps grid is shared by all attacks, set it "
                              "in [eps] values = [...].")
        _validate_attack(a["name"], params, where, source)
        norm = str(params.get("norm", "inf"))
        key = _slug(a["name"] + ("" if norm == "inf" else f"-l{norm}"))
        if key in akeys:  # the same attack twice with other parameters: tell them apart by a hash
            key = f"{key}-{_short_hash(params)}"
        if key in akeys:
            raise RobustError(f"Spec {source}: {where} repeats attack {a['name']!r} with the same parameters.")
        akeys.add(key)
        attacks.append(AttackEntry(name=a["name"], key=key, params=params))

    fooling = {**_FOOLING_DEFAULTS, **_table(raw, "fooling", source)}
    _check_keys(fooling, _FOOLING_DEFAULTS, "[fooling]", source)
    if not (isinstance(fooling["threshold"], (int, float)) and 0 < fooling["threshold"] < 1):
        raise _err(source, "fooling.threshold", "a probability strictly between 0 and 1", fooling["threshold"])
    _int(fooling["seeds"], "fooling.seeds", source)
    _int(fooling["max_steps"], "fooling.max_steps", source)
    if fooling["classes"] != "all" and not (isinstance(fooling["classes"], list)
                                            and all(isinstance(c, int) for c in fooling["classes"])):
        raise _err(source, "fooling.classes", "\"all\" or a list of class indices", fooling["classes"])

    report = {**_REPORT_DEFAULTS, **_table(raw, "report", source)}
    _check_keys(report, _REPORT_DEFAULTS, "[report]", source)
    _int(report["examples"], "report.examples", source, minimum=0)
    _int(report["saliency"], "report.saliency", source, minimum=0)
    if report["example_eps"] is None:
        report["example_eps"] = max(e for e in eps) if len(eps) == 1 else eps[len(eps) // 2]
    _number(report["example_eps"], "report.example_eps", source)

    return Spec(
        name=name, title=str(raw.get("title", name)), seed=seed, dataset=dataset, data_path=path,
        train_limit=_int(data.get("train_limit"), "data.train_limit", source, optional=True),
        test_limit=_int(data.get("test_limit", 1000), "data.test_limit", source, optional=True),
        models=tuple(models), attacks=tuple(attacks), eps=eps, fooling=fooling, report=report, source=source,
    )


def _validate_attack(name: str, params: dict, where: str, source: str) -> None:
    """Build the attack once with a small eps so unknown names and bad parameters fail before any training."""
    from robust.attacks import get_attack

    try:
        get_attack(name, eps=0.0, **params)
    except RobustError as exc:
        raise RobustError(f"Spec {source}: {where}: {exc}") from None
    except TypeError as exc:
        raise RobustError(f"Spec {source}: {where}: bad parameters for attack {name!r}: {exc}.") from None


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def settings_hash(obj) -> str:
    """A stable hash of JSON-able settings, used to decide whether a trained model can be reused."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
