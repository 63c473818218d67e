"""The end-to-end study behind ``robust run``: plan the spec's cells, compute them, write the run folder.

This module plans and writes; :mod:`robust.cells` and
:func:`robust.training.train_cell` compute. A study is a plan of cells
(models to train; model x attack over the eps grid; each model's checks and
figure arrays), mapped through the pure cell functions. Every result (a
trained model, each row of an attack cell, a model's checks and arrays) is
written atomically to the run folder the moment its cell is done, so a run killed at any point continues with
``--resume`` and ends with the same ``results.json`` as an uninterrupted run
(up to wall-clock fields: ``seconds``, ``started``, ``finished``). A second
run into the same folder at the same time is refused through an OS file lock.

Layout of a run folder::

    spec.json               the validated spec this run was started with
    models/<key>/           model.keras + model.json (a `robust train` folder) + settings.json
    records/*.json          one file per model x attack x eps, plus <key>__checks.json and <key>__transfer.json
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
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from robust import backend
from robust.artifacts import atomic_path, write_json
from robust.attacks import strongest as strongest_attack
from robust.checks import sanity_checks
from robust.errors import RobustError
from robust.report.results import RESULTS_SCHEMA
from robust.spec import Spec, settings_hash, threat_tag

LOCK_FILE = ".robust.lock"
#: Fields of results.json that measure time, not the model: they differ between a resumed and an
#: uninterrupted run (README, `robust run`, lists them; a test checks that it does).
WALL_CLOCK_KEYS = ("seconds", "started", "finished", "train_seconds", "standard_epoch_seconds", "ratio_to_standard")
#: Images of the transfer matrix (the first of the attacked subset): enough to see a gap of a few points.
TRANSFER_IMAGES = 200


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


def in_process(fn: Callable, cells: list) -> Iterator[tuple]:
    """The in-process engine: ``(i, fn(cells[i]))`` for each cell, one after the other."""
    return ((i, fn(cell)) for i, cell in enumerate(cells))


in_process.facts = lambda: {"engine": "in-process"}  # what the report's run facts say about the engine


@dataclasses.dataclass
class Study:
    """Plans a spec's cells, maps the pure cell functions over them, and alone writes the run folder.

    Attributes:
        spec: the validated spec.
        out: the run folder.
        progress: progress bars on stderr.
        echo: where one-line messages go.
        mapper: ``mapper(fn, cells)`` yields ``(i, fn(cells[i]))`` for each cell, in the order the
            results become available; in-process by default. Another engine computes the same pure
            cell functions elsewhere (:class:`robust.ray_engine.RayMapper`: a Ray cluster); its
            ``facts()`` (if it has one) go into the run facts. The study alone writes.
    """

    spec: Spec
    out: Path
    progress: bool = True
    echo: Callable[[str], None] = print
    mapper: Callable[[Callable, list], Iterator[tuple]] = in_process

    def run(self, *, resume: bool = False, force: bool = False, render: bool = True) -> dict:
        started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        t0 = time.perf_counter()
        self._bar = None
        with run_lock(self.out), contextlib.closing(self):
            _prepare_folder(self.out, self.spec, resume=resume, force=force)
            data = self._data()
            self.echo(f"Data: {data['dataset'].describe()}")
            self.echo(f"Attacked: {len(data['indices'])} test images (class-balanced, seed {self.spec.seed})")
            self.echo(f"Device: {backend.device()['description']}")
            self.echo(f"Engine: {self._facts()['engine']}")
            models = self._models(data)
            self._attack_all(models, data)
            results = self.assemble(models, data, started=started, seconds=time.perf_counter() - t0)
            write_json(self.out / "results.json", results)
        from robust.report.robustness import headline_lines

        for line in headline_lines(results):  # the headline number, in the terminal too
            self.echo(line)
        folders = sorted({str((self.out / m["folder"]).parent) for m in results["models"].values() if m["folder"]})
        if folders:
            self.echo(f"Models: {', '.join(folders)}")
        self.echo(f"Results: {self.out / 'results.json'}")
        if render:
            from robust.report import render_report

            paths = render_report(self.out)
            self.echo(f"Report: {paths['html']}")
        return results

    # -- planning ----------------------------------------------------------

    def _data(self) -> dict:
        from robust.cells import DataRef, study_data
        from robust.data import balanced_indices

        ref = DataRef(self.spec.dataset, self.spec.data_path, self.spec.train_limit, self.spec.seed)
        ds = study_data(ref.dataset, ref.data_path, train_limit=ref.train_limit, seed=ref.seed)
        idx = balanced_indices(ds.y_test, self.spec.test_limit or len(ds.y_test), self.spec.seed)
        return {"dataset": ds, "ref": ref, "indices": tuple(int(i) for i in idx), "y": ds.y_test[idx]}

    def _train_cell(self, entry, data) -> tuple:
        from robust.adversarial import AdversarialConfig
        from robust.training import TrainCell

        cell = TrainCell(model=entry.name, options=tuple(sorted(entry.options.items())), dataset=self.spec.dataset,
                         data_path=self.spec.data_path, train_limit=self.spec.train_limit, epochs=entry.epochs,
                         batch_size=entry.batch_size, lr=entry.lr, seed=self.spec.seed,
                         adversarial=AdversarialConfig(**entry.adversarial) if entry.adversarial else None)
        ds = data["dataset"]
        settings = {"model": entry.name, "options": entry.options, "dataset": ds.name, "data_source": ds.source,
                    "train_size": len(ds.y_train), "epochs": entry.epochs, "batch_size": entry.batch_size,
                    "lr": entry.lr, "seed": self.spec.seed}
        if entry.adversarial:  # standard models keep their old settings hash (and are reused)
            settings["adversarial"] = entry.adversarial
        return cell, settings

    def _models(self, data) -> dict:
        """Every model's reference and card: trained models are trained (or reused) first."""
        from robust.artifacts import read_card
        from robust.cells import ModelRef
        from robust.training import train_cell

        plans, todo, starting = {}, [], {}
        for entry in self.spec.models:
            if entry.ref:
                plans[entry.key] = {"entry": entry, "folder": None,
                                    "ref": ModelRef(entry.ref, entry.value_range, entry.unsafe)}
                continue
            folder = self.out / "models" / entry.key
            cell, settings = self._train_cell(entry, data)
            plans[entry.key] = {"entry": entry, "folder": folder, "ref": ModelRef(str(folder))}
            saved = folder / "settings.json"
            card = read_card(folder) if folder.is_dir() else None
            if card and saved.is_file() and json.loads(saved.read_text()).get("hash") == settings_hash(settings):
                self._say(f"Model {entry.label}: reusing {folder} (same settings), test accuracy "
                          f"{card['test_accuracy']:.4f}")
                continue
            threat = f", adversarially ({threat_tag(entry.adversarial)})" if entry.adversarial else ""
            starting[id(cell)] = (entry.label, f"training {entry.name} for {entry.epochs} epochs{threat}")
            todo.append((entry.key, cell, settings))
        self._grow_bar(len(todo))
        # In this process, a line when each model starts and after each epoch; another engine trains
        # elsewhere, where no callback reaches this console, so its models are announced up front.
        live = self.mapper is in_process
        for _, cell, _ in ([] if live else todo):
            self._say("Model {}: {}".format(*starting[id(cell)]))
        # The study's bar counts models as cells; Keras's epoch bars would break its line.
        train = partial(train_cell, progress=False, on_epoch=self._epoch_line(starting) if live else None)
        for i, trained in self.mapper(train, [cell for _, cell, _ in todo]):
            key, _, settings = todo[i]
            _save_trained(plans[key]["folder"], trained, settings)
            self._say(f"Model {plans[key]['entry'].label}: test accuracy {trained.card['test_accuracy']:.4f} "
                      f"({trained.card['seconds']:.0f} s)")
            self._bar.update()
        for key, plan in plans.items():
            plan.update(self._describe(plan, data))
        return plans

    def _epoch_line(self, starting: dict):
        """``on_epoch`` for :func:`robust.training.train_cell`: one line as a model starts and after each epoch."""
        def line(cell, epoch, epochs, logs):
            label, what = starting[id(cell)]
            if epoch == 0:
                self._say(f"Model {label}: {what}")
            else:
                self._say(f"Model {label}: epoch {epoch}/{epochs}, validation accuracy {logs['val_accuracy']:.4f} "
                          f"({logs['seconds']:.0f} s)")
        return line

    def _describe(self, plan, data) -> dict:
        """A model's card, kind and architecture summary (a ready model's card is measured here)."""
        from robust.artifacts import read_card
        from robust.cells import describe_ready, load_ref
        from robust.summary import summarize

        loaded = load_ref(plan["ref"])
        if plan["folder"] is not None:
            card, kind = read_card(plan["folder"]), _model_kind(plan["entry"].name)
        else:
            self._say(f"Model {plan['entry'].label}: {loaded.describe()}")
            card, kind = describe_ready(loaded, data["dataset"]), loaded.kind
        return {"card": card, "kind": kind, "summary": summarize(loaded.model).to_dict()}

    def _cells(self, models: dict, data: dict) -> tuple[list, list]:
        """The attack cells (model x attack over the whole eps grid) and the per-model extras cells."""
        from robust.cells import AttackCell, ExtrasCell

        eps = tuple(sorted(self.spec.eps))
        attacks = [AttackCell(key, m["ref"], data["ref"], a.name, a.key, tuple(sorted(a.params.items())), eps,
                              data["indices"], self.spec.seed) for key, m in models.items() for a in self.spec.attacks]
        strongest = self.spec.attacks[strongest_attack([a.name for a in self.spec.attacks])]
        f = self.spec.fooling
        extras = [ExtrasCell(key, m["ref"], data["ref"], data["indices"], strongest.name,
                             tuple(sorted(strongest.params.items())), float(self.spec.report["example_eps"]),
                             int(self.spec.report["examples"]), int(self.spec.report["saliency"]),
                             tuple(sorted(f.items())) if f["enabled"] else None, self.spec.seed,
                             check_eps=float(self.spec.report["example_eps"]) or None,
                             pgd_params=tuple(sorted(self._check_attack()[1].items())))
                  for key, m in models.items()]
        return attacks, extras

    def _check_attack(self) -> tuple[str, dict]:
        """The white-box attack of the masking checks: the spec's first PGD (its norm, loss, steps), else PGD-40."""
        pgd = next((a for a in self.spec.attacks if a.name == "pgd"), None)
        return "pgd", dict(pgd.params) if pgd else {"steps": 40}

    def _transfer_cells(self, models: dict, data: dict) -> list:
        """One cell per model with another model to transfer to: its examples at the example eps on 200 images."""
        from robust.cells import TransferCell

        eps = float(self.spec.report["example_eps"])
        if len(models) < 2 or eps <= 0:
            return []
        attack, params = self._check_attack()
        refs = tuple((key, m["ref"]) for key, m in models.items())
        return [TransferCell(key, refs, data["ref"], attack, tuple(sorted(params.items())), eps,
                             data["indices"][:TRANSFER_IMAGES], self.spec.seed) for key in models]

    # -- computing through the mapper, writing here --------------------------

    def _attack_all(self, models: dict, data: dict) -> None:
        from robust.cells import run_cell

        attack_cells, extras_cells = self._cells(models, data)
        records = self.out / "records"
        records.mkdir(exist_ok=True)
        todo = [c for c in attack_cells
                if not all((records / _record_name(c.model_key, c.attack_key, e)).exists() for e in c.eps)]
        extra = [c for c in extras_cells if not (records / f"{c.model_key}__checks.json").exists()
                 or not (self.out / "arrays" / f"{c.model_key}.npz").exists()]
        extra += [c for c in self._transfer_cells(models, data) if not (records / f"{c.source}__transfer.json").exists()]
        rows = [(c.model_key, c.attack_key, e) for c in attack_cells for e in c.eps]
        done = sum((records / _record_name(*r)).exists() for r in rows)
        if done:
            self._say(f"Resuming: {done} of {len(rows)} attack results already done "
                      f"({len(attack_cells) - len(todo)} of {len(attack_cells)} model x attack cells complete)")
        self._grow_bar(len(todo) + len(extra))
        for i, result in self.mapper(run_cell, todo + extra):
            cell = (todo + extra)[i]
            self._bar.set_postfix_str(f"{getattr(cell, 'model_key', getattr(cell, 'source', ''))} "
                                      f"{getattr(cell, 'attack_key', 'checks, examples, fooling, transfer')}")
            for row in result.rows:
                write_json(records / _record_name(row["model"], row["attack_key"], row["eps"]), row)
            if result.checks is not None:
                self._write_extras(cell.model_key, result)
            if result.transfer is not None:
                write_json(records / f"{result.transfer['source']}__transfer.json", result.transfer)
            self._bar.update()

    def _grow_bar(self, cells: int) -> None:
        """One bar over every cell computed (models trained, attack and extras cells); each stage adds to it."""
        from tqdm.auto import tqdm

        if self._bar is None:
            self._bar = tqdm(total=0, desc="study", unit="cell", disable=not self.progress)
        self._bar.total += cells
        self._bar.refresh()

    def _say(self, line: str) -> None:
        """``echo`` without breaking the bar's line."""
        if self._bar is None:
            self.echo(line)
            return
        with self._bar.external_write_mode():
            self.echo(line)

    def _facts(self) -> dict:
        """The engine's run facts: ``{"engine": "in-process"}`` or what the mapper's ``facts()`` says."""
        return getattr(self.mapper, "facts", in_process.facts)()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def _write_extras(self, key: str, result) -> None:
        (self.out / "arrays").mkdir(exist_ok=True)
        with atomic_path(self.out / "arrays" / f"{key}.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, **{k: np.asarray(v) for k, v in result.arrays.items()})
        write_json(self.out / "records" / f"{key}__checks.json", result.checks)

    # -- results -------------------------------------------------------------

    def assemble(self, models: dict, data: dict, *, started: str, seconds: float) -> dict:
        ds = data["dataset"]
        records = [json.loads((self.out / "records" / _record_name(key, a.key, e)).read_text())
                   for key in models for a in self.spec.attacks for e in self.spec.eps]
        model_info = {key: self._model_info(key, m, [r for r in records if r["model"] == key], ds)
                      for key, m in models.items()}
        transfer = self._transfer_matrix(models)
        if transfer:
            from robust.checks import transfer_checks

            for key, checks in transfer_checks(transfer, {k: m["label"] for k, m in model_info.items()}).items():
                model_info[key]["checks"] += checks
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
                "device": backend.device()["description"],
                **self._facts(),
                "versions": backend.versions(),
                "data": {"dataset": ds.name, "source": ds.source, "train_size": int(len(ds.y_train)),
                         "test_size_total": int(len(ds.y_test)), "attacked": int(len(data["y"])),
                         "input_shape": list(ds.input_shape), "value_range": list(ds.value_range),
                         "class_names": list(ds.class_names)},
            },
            "models": model_info,
            "records": records,
            "transfer": transfer,
        }

    def _transfer_matrix(self, models: dict) -> dict | None:
        """``{"attack", "eps", "n", "accuracy": {source: {target: accuracy}}}`` from the transfer records."""
        files = [self.out / "records" / f"{key}__transfer.json" for key in models]
        found = [json.loads(f.read_text()) for f in files if f.exists()]
        if not found:
            return None
        first = found[0]
        return {"attack": first["attack"], "eps": first["eps"], "n": first["n"],
                "accuracy": {t["source"]: t["accuracy"] for t in found}}

    def _model_info(self, key: str, m: dict, records: list[dict], ds) -> dict:
        checks_raw = json.loads((self.out / "records" / f"{key}__checks.json").read_text())
        arrays = np.load(self.out / "arrays" / f"{key}.npz", allow_pickle=False)
        fooling = []
        if "fooling_target" in arrays.files:
            for t, c, st, r in zip(arrays["fooling_target"], arrays["fooling_confidence"],
                                   arrays["fooling_steps"], arrays["fooling_reached"]):
                fooling.append({"class": int(t), "class_name": ds.class_names[int(t)],
                                "confidence": round(float(c), 6), "steps": int(st), "reached": bool(r)})
        card, entry = m["card"], m["entry"]
        return {
            "label": entry.label, "name": entry.name, "options": entry.options,
            "kind": m["kind"], "folder": str(m["folder"].relative_to(self.out)) if m["folder"] else None,
            "ref": entry.ref, "value_range": list(card.get("value_range", (0.0, 1.0))),
            "value_range_source": card.get("value_range_source", "trained by robust on [0, 1] images"),
            "class_names": card.get("class_names") if entry.ref else None,  # a ready model's own names
            "params": card["params"], "test_accuracy": card["test_accuracy"],
            "subset_clean_accuracy": records[0]["clean_accuracy"],
            "epochs": card["epochs"], "train_seconds": card.get("seconds"),
            "adversarial": card.get("adversarial"),  # the card's threat model and robust validation, or None
            "summary": m["summary"], "raw_checks": checks_raw,
            "checks": sanity_checks(records, checks_raw, ds.num_classes),
            "fooling": fooling, "arrays": f"arrays/{key}.npz",
        }


def _save_trained(folder: Path, trained, settings: dict) -> None:
    """Write a trained cell's model file and card (atomically, the card last), then its settings."""
    from robust.artifacts import save_trained_bytes

    save_trained_bytes(folder, trained.keras_bytes, trained.card)
    write_json(folder / "settings.json", {"hash": settings_hash(settings), "settings": settings})


def _model_kind(name: str) -> str:
    from robust.models import registry

    spec = registry().get(name)
    return spec.kind if spec else "unknown"


def strip_wall_clock(obj):
    """``results.json`` without the fields that measure wall-clock time (for comparing runs)."""
    if isinstance(obj, dict):
        return {k: strip_wall_clock(v) for k, v in obj.items() if k not in WALL_CLOCK_KEYS}
    if isinstance(obj, list):
        return [strip_wall_clock(v) for v in obj]
    return obj
