"""Files on disk: atomic writes, trained-model directories and safe model loading.

A directory written by ``robust train`` holds ``model.keras`` and
``model.json`` (the model card: name, dataset, input shape and value range,
class names, accuracy, versions ...). Every write goes to a temporary file in
the same folder and is renamed into place, so an interrupted run never leaves
a half-written file behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from robust.errors import RobustError

MODEL_FILE = "model.keras"
CARD_FILE = "model.json"


#: Files written inside :func:`all_or_nothing`: (temporary file, final path), renamed into place at its end.
_STAGED: contextvars.ContextVar[list[tuple[Path, Path]] | None] = contextvars.ContextVar("robust_staged", default=None)


def _write_error(path: Path, exc: OSError) -> RobustError:
    reason = exc.strerror or str(exc)
    return RobustError(
        f"Could not write {path}: {reason} ({errno.errorcode.get(exc.errno, 'OSError')}). Expected a writable "
        "location with free space; nothing was half-written there (a previous file, if any, is unchanged). "
        "Free some space, fix the permissions, or choose another output location."
    )


def check_writable(path: str | os.PathLike, *, kind: str = "folder", what: str = "output",
                   min_free_bytes: int = 1 << 20) -> None:
    """Raise a RobustError unless ``path`` (a folder, or a file to write) can be written; create nothing.

    Run before the work starts, so that a read-only, full or mistyped output
    location is refused at once instead of after an hour of training. The
    nearest existing folder must take a new file (probed with a temporary one,
    removed at once) and have ``min_free_bytes`` free.

    Args:
        path: the output folder, or the output file when ``kind="file"``.
        kind: ``"folder"`` or ``"file"``.
        what: names the output in the message (e.g. ``"--out"``).
        min_free_bytes: free space below which the location counts as full.
    """
    path = Path(path)
    try:
        if path.exists() and kind == "folder" and not path.is_dir():
            raise RobustError(f"{what} {path} is a file; expected a folder (existing or new). Choose another path.")
        if path.exists() and kind == "file" and not path.is_file():
            raise RobustError(f"{what} {path} is {'a folder' if path.is_dir() else 'not a regular file'}; "
                              "expected the name of a file to write, such as results.json.")
        probe = path if kind == "folder" else path.parent
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if not probe.is_dir():
            raise RobustError(f"{what} {path} cannot be created: {probe} is a file, not a folder. "
                              "Expected a path inside a writable folder; choose another one.")
        fd, tmp = tempfile.mkstemp(prefix=".robust-probe.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
        stat = os.statvfs(probe)
    except OSError as exc:
        raise RobustError(f"{what} {path} is not writable: {exc.strerror or exc} in {exc.filename or path}. "
                          "Expected a folder you can write to; fix its permissions or choose another "
                          "location.") from None
    free = stat.f_bavail * stat.f_frsize
    if free < min_free_bytes:
        raise RobustError(f"{what} {path} is on a full disk: {free:,} bytes free in {probe}, at least "
                          f"{min_free_bytes:,} needed. Free some space or choose another location.")


@contextlib.contextmanager
def claim(paths, *, force: bool = False, what: str = "output", command: str = "robust") -> Iterator[None]:
    """Hold output files (or folders) for one command: checked, not taken by another run, and not overwritten.

    Before any work starts: every path must be writable (:func:`check_writable`),
    and one that already exists is refused unless ``force`` (so a finished result is
    never replaced by accident). For the whole block, each path holds an exclusive
    lock (a hidden ``.NAME.lock`` in the nearest existing folder, so claiming creates no
    folder; removed at the end, and the OS drops the lock if the process dies), so two
    commands writing the same file at once are refused instead of one silently losing
    its result.

    Args:
        paths: one path or several (files, or folders a command fills).
        force: allow replacing what exists.
        what: names the output in messages (``"--out"``).
        command: names the command in the message to a second run (``"robust attack"``).
    """
    import fcntl

    paths = [Path(p) for p in ([paths] if isinstance(paths, (str, os.PathLike)) else paths)]
    for path in paths:
        check_writable(path, kind="folder" if path.is_dir() else "file", what=what)
    taken = [p for p in paths if p.exists() and (not p.is_dir() or any(p.iterdir()))]
    if taken and not force:
        names = ", ".join(str(p) for p in taken[:3]) + (f" and {len(taken) - 3} more" if len(taken) > 3 else "")
        raise RobustError(f"{what} {names} already exists{' (not empty)' if taken[0].is_dir() else ''}; expected a "
                          "new location, so that an earlier result is never replaced by accident. Pass --force to "
                          "replace it, or choose another --out.")
    held: list[tuple[int, Path]] = []
    try:
        for path in paths:
            home = path.parent  # the nearest existing folder: claiming creates no folder
            while not home.exists() and home.parent != home:
                home = home.parent
            lock = home / (".%s.lock" % str(path.relative_to(home)).replace(os.sep, "_"))
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
                os.close(fd)
                raise RobustError(f"{what} {path} is being written by another {command} (pid {holder}) right now; "
                                  "two runs writing one result would lose one of them. Wait for it to finish, or "
                                  "choose another --out.") from None
            held.append((fd, lock))
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        for fd, lock in held:
            lock.unlink(missing_ok=True)
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception (or KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was. A failed write (read-only, full disk) is a
    :class:`RobustError` naming the path. Inside :func:`all_or_nothing` the
    rename waits until every file of the group is written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix or path.suffix}", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    staged = _STAGED.get()
    done = False
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; finished files get the usual mode
        yield tmp_path
        if staged is None:
            os.replace(tmp_path, path)
        else:
            staged.append((tmp_path, path))
        done = True
    except OSError as exc:
        raise _write_error(path, exc) from None
    finally:
        if not done and tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def all_or_nothing() -> Iterator[None]:
    """Group writes: files written through :func:`atomic_path` inside replace their targets only when
    the whole block succeeds; on any error every one of them is dropped and the old files stay.

    ``robust report`` renders figures, report.html and report.md this way, so a
    failure half-way never leaves new figures beside an old report.
    """
    staged: list[tuple[Path, Path]] = []
    token = _STAGED.set(staged)
    try:
        yield
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    finally:
        _STAGED.reset(token)
    try:
        for tmp, final in staged:
            os.replace(tmp, final)
    except OSError as exc:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise _write_error(Path(exc.filename or staged[0][1]), exc) from None


def pending(path: str | os.PathLike) -> Path:
    """Where the content of ``path`` is now: its staged temporary file inside :func:`all_or_nothing`, else itself."""
    path = Path(path)
    for tmp, final in reversed(_STAGED.get() or []):
        if final == path:
            return tmp
    return path


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def save_model(path: str | os.PathLike, model) -> None:
    """Save a Keras model to a ``.keras`` file atomically."""
    with atomic_path(path, suffix=".keras") as tmp:
        model.save(tmp)


def save_trained(directory: str | os.PathLike, model, card: dict) -> None:
    """Write ``model.keras`` then ``model.json`` into ``directory``, each atomically.

    The card is written last: a directory with a card always has its model.
    A write that fails (full disk) leaves the previous model and card as they were.
    """
    directory = Path(directory)
    with atomic_path(directory / MODEL_FILE, suffix=".keras") as tmp:
        model.save(tmp)
        digest = file_sha256(tmp)
        # An old card must not outlive its model: drop it just before the new model lands.
        (directory / CARD_FILE).unlink(missing_ok=True)
    write_json(directory / CARD_FILE, {**card, "model_sha256": digest})


def save_trained_bytes(directory: str | os.PathLike, keras_bytes: bytes, card: dict) -> None:
    """:func:`save_trained` for a model already serialised (a ``.keras`` file's bytes, e.g. from another process)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CARD_FILE).unlink(missing_ok=True)
    write_bytes(directory / MODEL_FILE, keras_bytes)
    write_json(directory / CARD_FILE, {**card, "model_sha256": hashlib.sha256(keras_bytes).hexdigest()})


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (a VGG's .keras is hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_card_matches(card: dict, model, model_path: Path) -> None:
    """Refuse a ``robust train`` folder whose ``model.keras`` is not the model its ``model.json`` describes.

    A card written since cards recorded it names the file's SHA-256; older cards are checked on what they
    record of the model (parameter count, input shape, classes). A mismatch means one file was replaced or
    copied from another run, and every number attributed to the card (dataset, value range, accuracy,
    how it was trained) would describe another model.
    """
    import numpy as np

    from robust.models import count_params

    card_path = model_path.parent / CARD_FILE
    fix = (f"Re-train into a new folder, copy the two files together, or remove {card_path} and pass --dataset "
           "to use the .keras file alone.")
    recorded = card.get("model_sha256")
    actual = file_sha256(model_path) if isinstance(recorded, str) else None
    if actual is not None and recorded != actual:
        raise RobustError(f"{model_path} is not the model its card {card_path} was written for: the card records "
                          f"a model file with SHA-256 {recorded[:12]}..., and this file has {actual[:12]}.... {fix}")
    inputs = getattr(model, "inputs", None)
    checks = [("params", card.get("params"), count_params(model)),
              ("input_shape", card.get("input_shape"),
               [None if d is None else int(d) for d in inputs[0].shape[1:]] if inputs and len(inputs) == 1 else None),
              ("num_classes", card.get("num_classes"),
               int(model.outputs[0].shape[-1]) if getattr(model, "outputs", None) else None)]
    for key, expected, found in checks:
        if expected is not None and found is not None and list(np.atleast_1d(expected)) != list(np.atleast_1d(found)):
            raise RobustError(f"{model_path} does not match its card {card_path}: the card records {key}="
                              f"{expected}, and the model has {key}={found}. {fix}")


def read_npz(path: str | os.PathLike, *, what: str = "arrays file") -> dict:
    """All arrays of a ``.npz`` file, read without pickle; anything else is a RobustError saying what it is.

    Args:
        path: the file.
        what: names the file's role in the message (``"dataset file"``).

    Returns:
        ``{name: numpy array}``, loaded into memory.
    """
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise RobustError(f"No {what} at {path}: expected a .npz file.")
    if not zipfile.is_zipfile(path):
        raise RobustError(f"{path} is not a .npz {what}: a .npz file is a zip archive of numpy arrays, and this "
                          f"file {_looks_like(path)}.")
    try:
        with np.load(path, allow_pickle=False) as f:
            return {name: f[name] for name in f.files}
    except ValueError as exc:
        if "pickle" in str(exc):
            raise RobustError(f"{path} holds Python objects (an object array, stored as a pickle), which robust "
                              f"never loads. Expected a .npz {what} of plain numeric arrays.") from None
        raise RobustError(f"{path} is a damaged .npz {what}: {str(exc).splitlines()[0]}.") from None
    except Exception as exc:
        raise RobustError(f"{path} is a damaged or truncated .npz {what} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}). Re-create it.") from None


def _looks_like(path: Path) -> str:
    """A few words on what a file holds, from its first bytes."""
    head = path.read_bytes()[:64]
    if not head:
        return "is empty"
    if head.startswith(b"\x93NUMPY"):
        return "is a single .npy array, not an archive of them"
    if head.startswith(b"PK"):
        return "starts like a zip archive but cannot be read as one (truncated or damaged)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if not text or not all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return f"starts with the bytes {head[:16]!r}"
    first = text.strip().splitlines()[0][:40] if text.strip() else ""
    return f"is text starting with {first!r}"


def read_card(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RobustError(f"{path} is not a readable model card (JSON): {exc}.") from None
    if not isinstance(card, dict):
        raise RobustError(f"{path} is not a model card: expected a JSON object as `robust train` writes; received "
                          f"a JSON {type(card).__name__}.")
    return card


def _listing(folder: Path, most: int = 5) -> str:
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return "nothing"
    return ", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")


def _missing_class(exc: BaseException, path: Path) -> str | None:
    """Keras's own cause when the .keras file ``path`` names a custom class no imported module registered."""
    import re

    text, seen = "", set()
    while exc is not None and id(exc) not in seen:  # Keras wraps the cause in "could not be deserialized"
        seen.add(id(exc))
        text += "\n" + str(exc)
        exc = exc.__cause__ or exc.__context__
    found = re.search(r"Could not locate (?:class|function) '([^']+)'", text)
    if not found:
        return None
    name = found.group(1)
    module = re.search(r"'module': '([\w.]+)', 'class_name': '%s'" % re.escape(name), text)
    registered = re.search(r"'registered_name': '([^']+)'", text[text.find(f"'class_name': '{name}'"):])
    facts = ([f"registered as {registered.group(1)!r}"] if registered else []) + (
        [f"defined in module {module.group(1)!r}"] if module else [])
    where = f" ({', '.join(facts)})" if facts else ""
    importer = module.group(1) if module else "your_layers"
    return (f"{path} uses the custom Keras class {name!r}{where}, which no imported module has registered, so "
            f"Keras cannot rebuild the model (Keras: Could not locate class {name!r}). Expected every custom layer "
            "to be registered before loading: load the file through a factory that imports the module first, e.g. "
            f"a file loader.py with `import keras, {importer}` and `def load(): return "
            f"keras.saving.load_model('{path}')`, then pass loader:load as the model.")


def load_model(ref: str | os.PathLike, *, unsafe: bool = False):
    """Load a model from a ``robust train`` directory or a ``.keras`` file.

    Returns:
        ``(model, card)`` where ``card`` is the directory's ``model.json`` as a dict, or ``None``.

    Raises:
        RobustError: missing, corrupt or truncated files; files that carry code
            (a ``Lambda`` layer) unless ``unsafe`` is set.
    """
    import keras

    path = Path(ref)
    card = None
    if path.is_dir():
        card = read_card(path)
        if not (path / MODEL_FILE).is_file():
            raise RobustError(
                f"{path} is a folder without {MODEL_FILE}. Expected a folder written by `robust train` "
                f"(with {MODEL_FILE} and {CARD_FILE}) or a .keras file; received a folder holding "
                f"{_listing(path)}."
            )
        path = path / MODEL_FILE
    elif not path.exists():
        raise RobustError(f"No model at {path}: expected a .keras file or a folder written by `robust train`.")
    if path.suffix != ".keras":
        raise RobustError(f"{path} is not a .keras file. Expected a Keras 3 model file (*.keras) "
                          f"or a folder written by `robust train`; received a {path.suffix or 'suffix-less'} file.")
    if not zipfile.is_zipfile(path):
        raise RobustError(f"{path} is corrupt or truncated: a .keras file is a zip archive and this one is not "
                          "readable as one. Re-save or re-train the model.")
    try:
        model = keras.saving.load_model(path, safe_mode=not unsafe, compile=False)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "lambda" in str(exc).lower():
            raise RobustError(
                f"{path} contains Python code (a Lambda layer or similar), which Keras's safe mode refuses "
                "to load because loading it would run that code. If you trust the file, pass --unsafe."
            ) from None
        raise RobustError(f"{path} could not be loaded as a Keras model: {str(exc).splitlines()[0]}") from None
    except Exception as exc:
        missing = _missing_class(exc, path)
        if missing:
            raise RobustError(missing) from None
        raise RobustError(f"{path} could not be loaded as a Keras model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}). Is it a complete .keras file?") from None
    if not isinstance(model, keras.Model):
        # A .keras archive can hold any saveable object, e.g. a single layer.
        raise RobustError(f"{path} holds a {type(model).__name__}, not a model. Expected a .keras file saved from "
                          "a keras.Model (model.save(path)).")
    if card:
        check_card_matches(card, model, path)
    return model, card
