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
import math
import re
import tomllib
import unicodedata
from importlib import resources
from pathlib import Path
from typing import Any

from robust.errors import MAX_COUNT, RobustError, known_names

BUILTIN_SPECS = ("mnist", "cifar10", "mnist-adversarial")


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
    adversarial: dict[str, Any] | None = None  # the threat model it is trained against (robust.adversarial.
                                  # AdversarialConfig's fields, defaults filled in); None: standard training


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
    ray_shared: str | None = None  # [ray] shared: a folder every Ray node mounts; only --ray reads it

    def to_dict(self) -> dict:
        """The spec as results.json and spec.json hold it: what the study computes, not where it runs."""
        d = dataclasses.asdict(self)
        d.pop("ray_shared")  # how data reaches Ray workers changes no number (and --resume may change it)
        return d


_TOP = {"name", "title", "seed", "data", "training", "models", "attacks", "eps", "fooling", "report", "ray"}
_FOOLING_DEFAULTS = {"enabled": True, "classes": "all", "seeds": 1, "threshold": 0.99, "max_steps": 300,
                     "step_size": None, "l2_decay": 0.0, "blur_every": 0, "jitter": 0}
_REPORT_DEFAULTS = {"examples": 8, "example_eps": None, "saliency": 6}
_MODEL_KEYS = {"name", "ref", "label", "options", "epochs", "batch_size", "lr", "value_range", "unsafe",
               "adversarial"}
_ADVERSARIAL_KEYS = ("method", "eps", "steps", "step_size", "beta", "norm", "warmup")
_KEY_CHARS = 48  # folder keys stay short: they name files and folders of the run


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
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise RobustError(f"Spec {path} is not UTF-8 text, as TOML must be: byte {exc.object[exc.start]:#04x} at "
                          f"position {exc.start} is not UTF-8. Save the file as UTF-8.") from None
    return parse_spec(text, source=str(path))


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


def _int(value, where, source, minimum=1, optional=False, maximum=None):
    """An integer field: a TOML integer (not a float, not inf or nan) in [minimum, maximum or MAX_COUNT]."""
    if value is None and optional:
        return None
    if (isinstance(value, bool) or not isinstance(value, int) or value < minimum
            or value > (MAX_COUNT if maximum is None else maximum)):
        over = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        raise _err(source, where, f"an integer in [{minimum}, {maximum}]" if maximum is not None
                   else (f"an integer of at most {MAX_COUNT:,}" if over else f"an integer >= {minimum}"), value)
    return value


def _number(value, where, source, minimum=0.0):
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value < minimum):
        raise _err(source, where, f"a number >= {minimum}", value)
    return float(value)


def _slug(text: str) -> str:
    """A folder-safe key that stays readable for any script: letters, digits and marks of every language
    are kept (NFKC-normalised, case-folded), every other run of characters becomes one '-'."""
    text = unicodedata.normalize("NFKC", str(text)).casefold()
    kept = "".join(ch if unicodedata.category(ch)[0] in "LNM" else "-" for ch in text)
    return re.sub(r"-+", "-", kept).strip("-")[:_KEY_CHARS].strip("-")


def parse_spec(text: str, *, source: str = "<string>") -> Spec:
    """Parse and validate a whole spec; every mistake is a RobustError naming the key.

    Everything that can be checked without data is checked here, before a run
    starts: names, types and ranges, every model's options and whether it
    takes the dataset's images, attack parameters, the fooling classes.
    """
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RobustError(f"Spec {source} is not valid TOML: {exc}.") from None
    _check_keys(raw, _TOP, "the top level", source)
    name = raw.get("name", "study")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name in (".", ".."):
        raise _err(source, "name", "a name of letters, digits, '.', '_' or '-' (it names the output folder)", name)
    title = raw.get("title", name)
    if not isinstance(title, str):
        raise _err(source, "title", "a string", title)
    seed = _int(raw.get("seed", 0), "seed", source, minimum=0, maximum=2**32 - 1)
    data = _parse_data(_table(raw, "data", source), source)
    models = _parse_models(raw, _parse_training(_table(raw, "training", source), source), data["dataset"], source)
    eps = _parse_eps(_table(raw, "eps", source), models, source)
    return Spec(
        name=name, title=title, seed=seed, **data, models=models, attacks=_parse_attacks(raw, source), eps=eps,
        fooling=_parse_fooling(_table(raw, "fooling", source), data["dataset"], source),
        report=_parse_report(_table(raw, "report", source), eps, models, source), source=source,
        ray_shared=_parse_ray(_table(raw, "ray", source), source),
    )


def _parse_ray(table: dict, source: str) -> str | None:
    """``[ray] shared``: an absolute folder path (its existence is checked by ``--ray``, on the driver)."""
    _check_keys(table, {"shared"}, "[ray]", source)
    shared = table.get("shared")
    if shared is not None and (not isinstance(shared, str) or not Path(shared).is_absolute()):
        raise _err(source, "ray.shared", "the absolute path of a folder that every node of the Ray cluster "
                   "mounts at the same place, such as \"/mnt/share/robust\"", shared)
    return shared


def _parse_data(data: dict, source: str) -> dict:
    from robust.data import DATASETS

    _check_keys(data, {"dataset", "path", "train_limit", "test_limit"}, "[data]", source)
    dataset = data.get("dataset", "mnist")
    if not isinstance(dataset, str) or dataset not in DATASETS:
        raise _err(source, "data.dataset", f"one of {known_names(DATASETS)}", dataset)
    path = data.get("path")
    if path is not None and (not isinstance(path, str) or not path):
        raise _err(source, "data.path", "a file or folder path", path)
    if path is not None and not Path(path).exists():
        raise _err(source, "data.path", "an existing .npz file or data folder (relative paths start in the "
                   "current folder)", path)
    return {"dataset": dataset, "data_path": path,
            "train_limit": _int(data.get("train_limit"), "data.train_limit", source, optional=True),
            "test_limit": _int(data.get("test_limit", 1000), "data.test_limit", source, optional=True)}


def _parse_training(training: dict, source: str) -> dict:
    _check_keys(training, {"epochs", "batch_size", "lr"}, "[training]", source)
    return {"epochs": _int(training.get("epochs", 5), "training.epochs", source),
            "batch_size": _int(training.get("batch_size", 128), "training.batch_size", source),
            "lr": _number(training.get("lr", 1e-3), "training.lr", source, minimum=1e-12)}


def _parse_models(raw: dict, training: dict, dataset: str, source: str) -> tuple[ModelEntry, ...]:
    models_raw = raw.get("models")
    if not isinstance(models_raw, list) or not models_raw:
        raise _err(source, "[[models]]", "at least one model table such as [[models]] name = \"lenet5\"", models_raw)
    entries, labels, keys = [], {}, set()
    for i, m in enumerate(models_raw):
        where = f"models[{i}]"
        if not isinstance(m, dict) or ("name" in m) == ("ref" in m):
            raise _err(source, where, "a table with either name (a zoo model to train) or ref (a ready model)", m)
        _check_keys(m, _MODEL_KEYS, where, source)
        entry, base, labelled = (_ref_model(m, training, where, source) if "ref" in m
                                 else _zoo_model(m, training, dataset, where, source))
        same = labels.get(unicodedata.normalize("NFC", entry.label))
        if same is not None:
            if labelled:
                raise RobustError(f"Spec {source}: {where} has the label {entry.label!r}, which models[{same}] "
                                  "already has. Labels name the models in the report: give each its own label.")
            raise RobustError(f"Spec {source}: {where} repeats model {entry.name!r} with the same options as "
                              f"models[{same}]. Remove one, or change its options or label.")
        labels[unicodedata.normalize("NFC", entry.label)] = i
        key = base if base not in keys else f"{base}-{_short_hash(entry.label)}"
        keys.add(key)
        entries.append(dataclasses.replace(entry, key=key))
    return tuple(entries)


def _label(m: dict, default: str, where: str, source: str) -> tuple[str, bool]:
    """The model's label and whether the spec gave it."""
    label = m.get("label")
    if label is None:
        return default, False
    if not isinstance(label, str) or not label.strip():
        raise _err(source, f"{where}.label", "a non-empty string", label)
    return label, True


def _zoo_model(m: dict, training: dict, dataset: str, where: str, source: str) -> tuple[ModelEntry, str, bool]:
    """A model the study trains: its options are checked, and that it takes the dataset's images."""
    from robust.data import DATASETS
    from robust.models import check_buildable

    name, options = m["name"], m.get("options", {})
    if not isinstance(name, str):
        raise _err(source, f"{where}.name", "the name of a zoo model (see `robust models`)", name)
    if not isinstance(options, dict):
        raise _err(source, f"{where}.options", "a table of builder options", options)
    info = DATASETS[dataset]
    try:
        options = check_buildable(name, info.image_shape, len(info.class_names), options)
    except RobustError as exc:
        raise RobustError(f"Spec {source}: {where} (on {dataset}): {exc}") from None
    epochs = _int(m.get("epochs", training["epochs"]), f"{where}.epochs", source)
    adversarial = _adversarial(m.get("adversarial"), info, epochs, where, source)
    threat = threat_tag(adversarial)
    label, labelled = _label(m, name + "".join(f" {k}={v}" for k, v in options.items())
                             + (f" {threat}" if threat else ""), where, source)
    base = _slug(label) if labelled else _slug(name + ("-" + _short_hash(options) if options else ""))
    base = base or _slug(name) or "model"
    # The threat model is part of the key (folder, record and array names; resume): a standard and an
    # adversarially trained LeNet-5 are different models even if their labels hid it.
    tag = _slug(threat)
    if threat and not re.search(rf"(^|-){re.escape(tag)}(-|$)", base):
        base = f"{base[:_KEY_CHARS - len(tag) - 1].strip('-')}-{tag}"
    entry = ModelEntry(
        name=name, label=label, key="", options=options, epochs=epochs,
        batch_size=_int(m.get("batch_size", training["batch_size"]), f"{where}.batch_size", source),
        lr=_number(m.get("lr", training["lr"]), f"{where}.lr", source, minimum=1e-12), adversarial=adversarial,
    )
    return entry, base, labelled


def _adversarial(table, info, epochs: int, where: str, source: str) -> dict | None:
    """The ``adversarial`` table of a zoo model, checked as ``robust train --adversarial`` checks it."""
    from robust.adversarial import AdversarialConfig

    if table is None:
        return None
    if not isinstance(table, dict) or "method" not in table or "eps" not in table:
        raise _err(source, f"{where}.adversarial", "a table with at least method and eps, such as "
                   "{ method = \"pgd\", eps = 0.3, steps = 10 }", table)
    _check_keys(table, _ADVERSARIAL_KEYS, f"{where}.adversarial", source)
    try:
        config = AdversarialConfig(**table)
        config.check_for(info.image_shape, (0.0, 1.0), epochs)  # the study's datasets load in [0, 1]
    except RobustError as exc:
        text = re.sub(r" \(--adv-[a-z-]+\)", "", str(exc))  # the spec's keys, not the CLI's options
        raise RobustError(f"Spec {source}: {where}.adversarial: {text}") from None
    return dataclasses.asdict(config)


def threat_tag(adversarial: dict | None) -> str:
    """A short name of a threat model (``pgd eps 0.3``, ``pgd l2 eps 1.5``), or "" for standard training."""
    if not adversarial:
        return ""
    norm = "" if adversarial["norm"] == "inf" else f" l{adversarial['norm']}"
    return f"{adversarial['method']}{norm} eps {adversarial['eps']:g}"


def _ref_model(m: dict, training: dict, where: str, source: str) -> tuple[ModelEntry, str, bool]:
    """A ready model, evaluated as it is (loaded and checked against the data when the run starts)."""
    ref = m["ref"]
    if not isinstance(ref, str) or not ref:
        raise _err(source, f"{where}.ref", "a model reference (file, folder, module:factory or plugin name)", ref)
    extra = set(m) & {"options", "epochs", "batch_size", "lr", "adversarial"}
    if extra:
        raise RobustError(f"Spec {source}: {where} is a ready model (ref), which is never trained or built, so "
                          f"{known_names(extra)} cannot apply to it; received {known_names(extra)}.")
    vr = m.get("value_range")
    finite = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)  # noqa: E731
    if vr is not None and not (isinstance(vr, list) and len(vr) == 2 and all(map(finite, vr)) and vr[0] < vr[1]):
        raise _err(source, f"{where}.value_range", "[low, high] of finite numbers with low < high", vr)
    unsafe = m.get("unsafe", False)
    if not isinstance(unsafe, bool):
        raise _err(source, f"{where}.unsafe", "true or false", unsafe)
    label, labelled = _label(m, ref, where, source)
    entry = ModelEntry(name=ref, label=label, key="", options={}, epochs=0, batch_size=training["batch_size"],
                       lr=training["lr"], ref=ref, value_range=tuple(vr) if vr else None, unsafe=unsafe)
    return entry, _slug(label) or _slug(Path(ref).stem) or "model", labelled


def _widest_range(models) -> float:
    """The widest input value range among the models: no eps of a spec may exceed it."""
    return max([1.0] + [m.value_range[1] - m.value_range[0] for m in models if m.value_range])


def _parse_eps(eps_table: dict, models, source: str) -> tuple[float, ...]:
    _check_keys(eps_table, {"values"}, "[eps]", source)
    eps_values = eps_table.get("values", [0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
    if not isinstance(eps_values, list) or not eps_values:
        raise _err(source, "eps.values", "a non-empty list of numbers", eps_values)
    eps = tuple(sorted({_number(e, "eps.values", source) for e in eps_values}))
    widest = _widest_range(models)
    if eps[-1] > widest:
        raise _err(source, "eps.values", f"numbers in [0, {widest:g}] (the models' input value range)", eps_values)
    return eps


def _parse_attacks(raw: dict, source: str) -> tuple[AttackEntry, ...]:
    attacks_raw = raw.get("attacks", [{"name": "fgsm"}, {"name": "pgd"}])
    if not isinstance(attacks_raw, list) or not attacks_raw:
        raise _err(source, "[[attacks]]", "at least one attack table such as [[attacks]] name = \"pgd\"", attacks_raw)
    attacks, akeys = [], set()
    for i, a in enumerate(attacks_raw):
        where = f"attacks[{i}]"
        if not isinstance(a, dict) or not isinstance(a.get("name"), str):
            raise _err(source, where, "a table with a name such as name = \"pgd\"", a)
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
    return tuple(attacks)


def _parse_fooling(table: dict, dataset: str, source: str) -> dict:
    """The fooling-image settings, checked by building the attack once; classes must be the dataset's."""
    from robust.attacks import FoolingImages
    from robust.data import DATASETS

    fooling = {**_FOOLING_DEFAULTS, **table}
    _check_keys(fooling, _FOOLING_DEFAULTS, "[fooling]", source)
    if not isinstance(fooling["enabled"], bool):
        raise _err(source, "fooling.enabled", "true or false", fooling["enabled"])
    if not (isinstance(fooling["threshold"], (int, float)) and 0 < fooling["threshold"] < 1):
        raise _err(source, "fooling.threshold", "a probability strictly between 0 and 1", fooling["threshold"])
    _int(fooling["seeds"], "fooling.seeds", source)
    _int(fooling["max_steps"], "fooling.max_steps", source)
    try:
        FoolingImages(**{k: fooling[k] for k in ("threshold", "max_steps", "step_size", "l2_decay", "blur_every",
                                                 "jitter")})
    except RobustError as exc:
        raise RobustError(f"Spec {source}: [fooling]: {exc}") from None
    n = len(DATASETS[dataset].class_names)
    classes = fooling["classes"]
    if classes != "all":
        if not (isinstance(classes, list) and classes
                and all(isinstance(c, int) and not isinstance(c, bool) for c in classes)):
            raise _err(source, "fooling.classes", "\"all\" or a non-empty list of class indices", classes)
        bad = [c for c in classes if not 0 <= c < n]
        if bad or len(set(classes)) != len(classes):
            raise _err(source, "fooling.classes", f"distinct class indices in [0, {n - 1}] ({dataset} has {n} "
                       "classes)", classes)
    return fooling


def _parse_report(table: dict, eps: tuple[float, ...], models, source: str) -> dict:
    report = {**_REPORT_DEFAULTS, **table}
    _check_keys(report, _REPORT_DEFAULTS, "[report]", source)
    # The report always shows an examples figure and a saliency figure: each needs at least one image.
    _int(report["examples"], "report.examples", source, minimum=1)
    _int(report["saliency"], "report.saliency", source, minimum=1)
    if report["example_eps"] is None:
        report["example_eps"] = max(e for e in eps) if len(eps) == 1 else eps[len(eps) // 2]
    widest = _widest_range(models)
    example_eps = _number(report["example_eps"], "report.example_eps", source)
    if example_eps > widest:
        raise _err(source, "report.example_eps", f"a number in [0, {widest:g}] (the models' input value range, "
                   "like eps.values)", report["example_eps"])
    return report


def _validate_attack(name: str, params: dict, where: str, source: str) -> None:
    """Build the attack once with a small eps so unknown names and bad parameters fail before any training."""
    from robust.attacks import attack_registry, get_attack

    if params.get("targeted") is True:
        raise RobustError(f"Spec {source}: {where} sets targeted = true, but a run spec has no target class to "
                          "attack towards: a study measures untargeted robustness. Remove targeted, or use "
                          "`robust attack MODEL --targeted --target C`.")
    defaults = getattr(attack_registry().get(name.strip().lower()), "parameters", dict)()
    for key, value in params.items():
        if isinstance(defaults.get(key), bool) and not isinstance(value, bool):  # a truthy string is not a yes
            raise _err(source, f"{where}.{key}", "true or false", value)
    try:
        get_attack(name, eps=0.0, **params)
    except RobustError as exc:
        raise RobustError(f"Spec {source}: {where}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise RobustError(f"Spec {source}: {where}: bad parameters for attack {name!r}: {exc}.") from None


def _short_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:8]


def settings_hash(obj) -> str:
    """A stable hash of JSON-able settings, used to decide whether a trained model can be reused."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]
