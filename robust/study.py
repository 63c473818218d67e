"""The end-to-end study behind ``robust run``: train (or reuse) the spec's models, attack them, report.

Every unit of work (a trained model, one model x attack x eps result, a
model's checks and its example arrays) is written atomically to the run
folder the moment it is done, so a run killed at any point continues with
``--resume`` and ends with the same ``results.json`` as an uninterrupted run
(up to wall-clock fields: ``seconds``, ``started``, ``finished``). A second
run into the same folder at the same time is refused through an OS file lock.

Layout of a run folder::

    spec.json               the validated spec this run was started with
    models/<key>/           model.keras + model.json (a `robust train` folder) + settings.json
    records/*.json          one file per model x attack x eps, plus <key>__checks.json
    arrays/<key>.npz        example, saliency, filter and fooling-image arrays for the figures
    results.json            everything above assembled (schema: robust.results/1)
    figures/*.png, report.html, report.md
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np

from robust.artifacts import atomic_path, write_json
from robust.errors import RobustError
from robust.spec import Spec, settings_hash

RESULTS_SCHEMA = "robust.results/1"
LOCK_FILE = ".robust.lock"
WALL_CLOCK_KEYS = ("seconds", "started", "finished", "train_seconds")


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold an exclusive lock on ``out`` for the whole run; the OS drops it if the process dies."""
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            raise RobustError(
                f"{out} is in use by another robust run (pid {holder}). Two runs writing one folder "
                "would corrupt each other's results: wait for it to finish, or use --out to choose another folder."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)


def _prepare_folder(out: Path, spec: Spec, *, resume: bool, force: bool) -> None:
    spec_file = out / "spec.json"
    started = spec_file.exists() or (out / "records").exists()
    if started and force:
        for name in ("records", "arrays", "figures"):
            shutil.rmtree(out / name, ignore_errors=True)
        for name in ("results.json", "report.html", "report.md", "spec.json"):
            (out / name).unlink(missing_ok=True)
    elif started and not resume:
        raise RobustError(
            f"{out} already holds a run. Use --resume to continue it (finished work is kept), --force to "
            "start over (trained models with the same settings are still reused), or --out for a new folder."
        )
    elif started and resume and spec_file.exists():
        before = json.loads(spec_file.read_text())
        now = json.loads(json.dumps(spec.to_dict(), default=str))
        before.pop("source", None), now.pop("source", None)
        if before != now:
            raise RobustError(
                f"--resume: the spec differs from the one {out} was started with, so its finished results "
                "would not belong to this spec. Use --force to start over with the new spec, or --out for a new folder."
            )
    write_json(spec_file, spec.to_dict())


def _record_name(model_key: str, attack_key: str, eps: float) -> str:
    return f"{model_key}__{attack_key}__eps{eps:.6f}.json"


def _device() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s): " + ", ".join(g.name for g in gpus) if gpus else f"CPU ({os.cpu_count()} cores)"


@dataclasses.dataclass
class Study:
    spec: Spec
    out: Path
    progress: bool = True
    echo: Callable[[str], None] = print

    def run(self, *, resume: bool = False, force: bool = False, render: bool = True) -> dict:
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        with run_lock(self.out):
            _prepare_folder(self.out, self.spec, resume=resume, force=force)
            data = self._load_data()
            self.echo(f"Data: {data['dataset'].describe()}")
            self.echo(f"Attacked: {len(data['y'])} test images (class-balanced, seed {self.spec.seed})")
            self.echo(f"Device: {_device()}")
            models = {}
            for entry in self.spec.models:
                models[entry.key] = self._model(entry, data["dataset"])
            self._attack_all(models, data)
            results = self.assemble(models, data, started=started, seconds=time.perf_counter() - t0)
            write_json(self.out / "results.json", results)
        if render:
            from robust.report import render_report

            paths = render_report(self.out)
            self.echo(f"Report: {paths['html']}")
        return results

    # -- data and models -------------------------------------------------

    def _load_data(self) -> dict:
        from robust.data import balanced_indices, load_dataset

        ds = load_dataset(self.spec.dataset, self.spec.data_path)
        if self.spec.train_limit:
            idx = balanced_indices(ds.y_train, self.spec.train_limit, self.spec.seed)
            ds = dataclasses.replace(ds, x_train=ds.x_train[idx], y_train=ds.y_train[idx],
                                     source=f"{ds.source} (train subset {len(idx)}, seed {self.spec.seed})")
        idx = balanced_indices(ds.y_test, self.spec.test_limit or len(ds.y_test), self.spec.seed)
        return {"dataset": ds, "x": ds.x_test[idx], "y": ds.y_test[idx], "test_indices": idx}

    def _model(self, entry, dataset) -> dict:
        """Train the model, load it when one with the same settings is in the folder, or load a ready model."""
        from robust.artifacts import load_model, read_card
        from robust.summary import summarize

        if entry.ref:
            return self._ready_model(entry, dataset)
        folder = self.out / "models" / entry.key
        settings = {"model": entry.name, "options": entry.options, "dataset": dataset.name,
                    "data_source": dataset.source, "train_size": len(dataset.y_train), "epochs": entry.epochs,
                    "batch_size": entry.batch_size, "lr": entry.lr, "seed": self.spec.seed}
        wanted = settings_hash(settings)
        saved = folder / "settings.json"
        card = read_card(folder) if folder.is_dir() else None
        if card and saved.is_file() and json.loads(saved.read_text()).get("hash") == wanted:
            model, card = load_model(folder)
            self.echo(f"Model {entry.label}: reusing {folder} (same settings), test accuracy {card['test_accuracy']:.4f}")
        else:
            from robust.training import train

            self.echo(f"Model {entry.label}: training {entry.name} for {entry.epochs} epochs")
            result = train(entry.name, dataset, epochs=entry.epochs, batch_size=entry.batch_size, lr=entry.lr,
                           seed=self.spec.seed, out_dir=folder, model_options=entry.options,
                           progress=self.progress, data_path=self.spec.data_path, limit=self.spec.train_limit)
            model, card = result.model, result.card
            write_json(saved, {"hash": wanted, "settings": settings})
            self.echo(f"Model {entry.label}: test accuracy {card['test_accuracy']:.4f} ({card['seconds']:.0f} s)")
        return {"entry": entry, "model": model, "card": card, "folder": folder, "kind": _model_kind(entry.name),
                "summary": summarize(model).to_dict()}

    def _ready_model(self, entry, dataset) -> dict:
        """A model we did not train (a file, a factory, a plugin): checked, measured, never trained."""
        from robust.models import check_model_input, count_params
        from robust.plugins import load_model_ref
        from robust.summary import summarize

        loaded = load_model_ref(entry.ref, value_range=entry.value_range, unsafe=entry.unsafe)
        self.echo(f"Model {entry.label}: {loaded.describe()}")
        model = loaded.model
        check_model_input(model, dataset.input_shape, data_name=f"the {dataset.name} data")
        lo, hi = loaded.value_range
        x = scale_to(dataset.x_test, (lo, hi))
        logits = np.asarray(model.predict(x, batch_size=256, verbose=0))
        card = {"model": loaded.name, "source": loaded.source, "value_range": [lo, hi],
                "value_range_source": loaded.value_range_source, "params": count_params(model),
                "test_accuracy": float(np.mean(logits.argmax(1) == dataset.y_test)), "epochs": None,
                "seconds": None, "outputs": loaded.outputs,
                "class_names": list(loaded.class_names) if loaded.class_names else None}
        return {"entry": entry, "model": model, "card": card, "folder": None, "kind": loaded.kind,
                "summary": summarize(model).to_dict()}

    # -- attacks ---------------------------------------------------------

    def _attack_all(self, models: dict, data: dict) -> None:
        from tqdm.auto import tqdm

        from robust.evaluation import evaluate_attack

        units = [(m, a, e) for m in models for a in self.spec.attacks for e in self.spec.eps]
        records = self.out / "records"
        records.mkdir(exist_ok=True)
        todo = [u for u in units if not (records / _record_name(u[0], u[1].key, u[2])).exists()]
        extra = [m for m in models if not (records / f"{m}__checks.json").exists()
                 or not (self.out / "arrays" / f"{m}.npz").exists()]
        if len(todo) < len(units):
            self.echo(f"Resuming: {len(units) - len(todo)} of {len(units)} attack results already done")
        bar = tqdm(total=len(todo) + len(extra), desc="study", unit="result", disable=not self.progress)
        for model_key, attack, eps in todo:
            m = models[model_key]
            bar.set_postfix_str(f"{model_key} {attack.key} eps={eps:g}")
            value_range = tuple(m["card"].get("value_range", (0.0, 1.0)))
            [row] = evaluate_attack(m["model"], attack.name, scale_to(data["x"], value_range), data["y"], [eps],
                                    value_range=value_range, seed=self.spec.seed, **attack.params)
            row = {"model": model_key, "attack_key": attack.key, **row}
            write_json(records / _record_name(model_key, attack.key, eps), row)
            bar.update()
        for model_key in extra:
            bar.set_postfix_str(f"{model_key} checks, examples, fooling images")
            self._model_extras(models[model_key], data)
            bar.update()
        bar.close()

    def _strongest_attack(self):
        pgd = [a for a in self.spec.attacks if a.name == "pgd"]
        return pgd[-1] if pgd else self.spec.attacks[-1]

    def _model_extras(self, m: dict, data: dict) -> None:
        """The gradient-masking checks that need new computation, and the arrays behind the figures."""
        from robust.attacks import FoolingImages, get_attack
        from robust.gradients import saliency_map

        spec, model, key = self.spec, m["model"], m["entry"].key
        lo, hi = (float(v) for v in m["card"].get("value_range", (0.0, 1.0)))
        x, y = scale_to(data["x"], (lo, hi)), data["y"]

        strongest = self._strongest_attack()
        checks = gradient_checks(model, x, y, value_range=(lo, hi), seed=spec.seed,
                                 attack_params=strongest.params if strongest.name == "pgd" else {})
        write_json(self.out / "records" / f"{key}__checks.json", checks)

        # Arrays for the figures: adversarial examples, saliency, first-layer filters, fooling images.
        k = min(spec.report["examples"], len(x))
        ex_attack = get_attack(strongest.name, eps=float(spec.report["example_eps"]), seed=spec.seed,
                               **strongest.params)
        ex = ex_attack(model, x[:k], y[:k], value_range=(lo, hi))
        clean_prob = _probabilities(model, x[:k], outputs=m["card"].get("outputs", "logits"))
        unit = lambda a: ((np.asarray(a, np.float32) - lo) / (hi - lo))  # noqa: E731  figures show [0, 1]
        s = min(spec.report["saliency"], len(x))
        arrays = {
            "example_x": unit(x[:k]), "example_y": y[:k], "example_adv": unit(ex.x_adv),
            "example_clean_pred": clean_prob.argmax(1), "example_clean_conf": clean_prob.max(1),
            "example_adv_pred": ex.adv_pred, "example_adv_conf": ex.adv_confidence,
            "saliency_x": unit(x[:s]), "saliency_y": y[:s],
            "saliency": saliency_map(model, x[:s], y[:s], value_range=(lo, hi)),
            "filters": first_layer_filters(model, x.shape[1:]),
        }
        if spec.fooling["enabled"]:
            f = spec.fooling
            fool = FoolingImages(threshold=float(f["threshold"]), max_steps=int(f["max_steps"]),
                                 **({"step_size": f["step_size"]} if f["step_size"] else {}),
                                 l2_decay=float(f["l2_decay"]), blur_every=int(f["blur_every"]),
                                 jitter=int(f["jitter"]), seed=spec.seed)
            classes = None if f["classes"] == "all" else list(f["classes"])
            fr = fool(model, classes=classes, seeds=int(f["seeds"]), value_range=(lo, hi))
            arrays.update(fooling_images=unit(fr.images), fooling_target=fr.target, fooling_confidence=fr.confidence,
                          fooling_steps=fr.steps, fooling_reached=fr.reached)
        from robust.visualize import report_arrays

        # "What the network learned": a few layers, a few units each (issue 14).
        arrays.update(report_arrays(model, x, value_range=(lo, hi), seed=spec.seed))
        (self.out / "arrays").mkdir(exist_ok=True)
        with atomic_path(self.out / "arrays" / f"{key}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{k2: np.asarray(v) for k2, v in arrays.items()})

    # -- results ---------------------------------------------------------

    def assemble(self, models: dict, data: dict, *, started: str, seconds: float) -> dict:
        from robust.training import versions

        ds = data["dataset"]
        records = []
        for key in models:
            for attack in self.spec.attacks:
                for eps in self.spec.eps:
                    records.append(json.loads((self.out / "records" / _record_name(key, attack.key, eps)).read_text()))
        model_info = {}
        for key, m in models.items():
            checks_raw = json.loads((self.out / "records" / f"{key}__checks.json").read_text())
            arrays = np.load(self.out / "arrays" / f"{key}.npz", allow_pickle=False)
            fooling = []
            if "fooling_target" in arrays.files:
                for t, c, st, r in zip(arrays["fooling_target"], arrays["fooling_confidence"],
                                       arrays["fooling_steps"], arrays["fooling_reached"]):
                    fooling.append({"class": int(t), "class_name": ds.class_names[int(t)],
                                    "confidence": round(float(c), 6), "steps": int(st), "reached": bool(r)})
            card = m["card"]
            model_info[key] = {
                "label": m["entry"].label, "name": m["entry"].name, "options": m["entry"].options,
                "kind": m["kind"], "folder": str(m["folder"].relative_to(self.out)) if m["folder"] else None,
                "ref": m["entry"].ref, "value_range": list(m["card"].get("value_range", (0.0, 1.0))),
                "value_range_source": m["card"].get("value_range_source", "trained by robust on [0, 1] images"),
                "class_names": m["card"].get("class_names") if m["entry"].ref else None,  # a ready model's own names
                "params": card["params"], "test_accuracy": card["test_accuracy"],
                "subset_clean_accuracy": next(r["clean_accuracy"] for r in records if r["model"] == key),
                "epochs": card["epochs"], "train_seconds": card.get("seconds"),
                "summary": m["summary"], "raw_checks": checks_raw,
                "checks": sanity_checks([r for r in records if r["model"] == key], checks_raw, ds.num_classes),
                "fooling": fooling, "arrays": f"arrays/{key}.npz",
            }
        return {
            "schema": RESULTS_SCHEMA,
            "name": self.spec.name,
            "title": self.spec.title,
            "spec": self.spec.to_dict(),
            "run": {
                "started": started,
                "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(seconds, 1),
                "seed": self.spec.seed,
                "device": _device(),
                "versions": versions(),
                "data": {"dataset": ds.name, "source": ds.source, "train_size": int(len(ds.y_train)),
                         "test_size_total": int(len(ds.y_test)), "attacked": int(len(data["y"])),
                         "input_shape": list(ds.input_shape), "value_range": list(ds.value_range),
                         "class_names": list(ds.class_names)},
            },
            "models": model_info,
            "records": records,
        }


def _model_kind(name: str) -> str:
    from robust.models import registry

    spec = registry().get(name)
    return spec.kind if spec else "unknown"


def scale_to(x: np.ndarray, value_range) -> np.ndarray:
    """Map images in [0, 1] to a model's input range [lo, hi]."""
    lo, hi = (float(v) for v in value_range)
    return x if (lo, hi) == (0.0, 1.0) else (lo + x * (hi - lo)).astype(np.float32)


def _probabilities(model, x: np.ndarray, *, outputs: str = "logits") -> np.ndarray:
    """Class probabilities of a model that outputs logits (softmax applied) or probabilities (used as they are)."""
    z = np.asarray(model.predict(x, batch_size=256, verbose=0), dtype=np.float64)
    if outputs == "probabilities":
        return z
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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


def gradient_checks(model, x: np.ndarray, y: np.ndarray, *, value_range=(0.0, 1.0), seed: int = 0,
                    attack_params: dict | None = None, n_full: int = 200) -> dict:
    """Measure what the masking checks need beyond the attack results.

    Returns the fraction of images whose input gradient is exactly zero, and
    the accuracy under a PGD-10 attack whose eps spans the whole value range
    (any image is reachable, so a working attack must reach chance or below).
    """
    from robust.attacks import get_attack
    from robust.gradients import input_gradient

    lo, hi = (float(v) for v in value_range)
    grads = input_gradient(model, x, y, value_range=(lo, hi))
    zero = np.all(grads.reshape(len(x), -1) == 0, axis=1)
    params = {k: v for k, v in (attack_params or {}).items() if k in ("norm", "loss")}
    if params.get("norm", "inf") != "inf":
        params["norm"] = "inf"  # the whole-range ball is an L-inf ball
    n_full = min(len(x), n_full)
    attack = get_attack("pgd", eps=hi - lo, steps=10, seed=seed, **params)
    res = attack(model, x[:n_full], y[:n_full], value_range=(lo, hi))
    return {
        "zero_gradient_fraction": float(zero.mean()),
        "n_gradient": int(len(x)),
        "full_range": {"eps": hi - lo, "attack": "pgd", "steps": 10, "n": n_full,
                       "adversarial_accuracy": float(np.mean(res.adv_pred == y[:n_full]))},
    }


def _status(ok: bool, warn: bool) -> str:
    return "pass" if ok else ("warn" if warn else "fail")


def sanity_checks(records: list[dict], raw: dict, num_classes: int) -> list[dict]:
    """The classic gradient-masking checks of one model, each pass / warn / fail with its numbers.

    Carlini et al. 2019 ("On evaluating adversarial robustness") and Athalye et
    al. 2018 list them: an iterative attack weaker than a one-step attack,
    accuracy that rises with eps, an unbounded attack that cannot reach chance,
    and vanishing gradients all mean the attack failed, not that the model is robust.
    """
    out = []
    n = max((r["n"] for r in records), default=1)
    tol = max(0.01, 1.0 / n)
    by = {}
    for r in records:
        by.setdefault(r["attack_key"], {})[r["eps"]] = r["adversarial_accuracy"]

    fgsm = [k for k in by if k.startswith("fgsm")]
    pgd = [k for k in by if k.startswith("pgd")]
    if fgsm and pgd:
        worst = max((by[p][e] - by[f][e], e, p, f) for p in pgd for f in fgsm for e in by[p] if e in by[f])
        gap, eps, p, f = worst
        out.append({"check": "PGD at least as strong as FGSM at every eps",
                    "status": _status(gap <= tol, gap <= 3 * tol),
                    "detail": f"largest excess of {p} over {f} accuracy: {gap * 100:+.1f} points at eps={eps:g} "
                              f"(tolerance {tol * 100:.1f})"})
    rises = []
    for k, accs in by.items():
        es = sorted(accs)
        rises += [(accs[b] - accs[a], k, a, b) for a, b in zip(es, es[1:])]
    if rises:
        rise, k, a, b = max(rises)
        out.append({"check": "accuracy non-increasing in eps",
                    "status": _status(rise <= tol, rise <= 3 * tol),
                    "detail": f"largest rise: {rise * 100:+.1f} points ({k}, eps {a:g} -> {b:g})"})
    full = raw["full_range"]
    chance = 1.0 / num_classes
    acc = full["adversarial_accuracy"]
    out.append({"check": "eps covering the whole value range drives accuracy to chance or below",
                "status": _status(acc <= chance + tol, acc <= 2 * chance),
                "detail": f"PGD-{full['steps']} at eps={full['eps']:g}: accuracy {acc * 100:.1f}% on {full['n']} "
                          f"images (chance {chance * 100:.1f}%)"})
    z = raw["zero_gradient_fraction"]
    out.append({"check": "no large fraction of zero input gradients",
                "status": _status(z <= 0.01, z <= 0.10),
                "detail": f"{z * 100:.1f}% of {raw['n_gradient']} images have an input gradient of exactly zero"})
    return out


def strip_wall_clock(obj):
    """``results.json`` without the fields that measure wall-clock time (for comparing runs)."""
    if isinstance(obj, dict):
        return {k: strip_wall_clock(v) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(obj, list):
        return [strip_wall_clock(v) for v in obj]
    return obj
