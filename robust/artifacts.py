"""Files on disk: atomic writes, trained-model directories and safe model loading.

A directory written by ``robust train`` holds ``model.keras`` and
``model.json`` (the model card: name, dataset, input shape and value range,
class names, accuracy, versions ...). Every write goes to a temporary file in
the same folder and is renamed into place, so an interrupted run never leaves
a half-written file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Iterator

from robust.errors import RobustError

MODEL_FILE = "model.keras"
CARD_FILE = "model.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any exception (or KeyboardInterrupt) the temporary file is removed and
    ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix or path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; finished files get the usual mode
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


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
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    # An old card must not outlive its model: drop it before the new model lands.
    (directory / CARD_FILE).unlink(missing_ok=True)
    save_model(directory / MODEL_FILE, model)
    write_json(directory / CARD_FILE, card)


def save_trained_bytes(directory: str | os.PathLike, keras_bytes: bytes, card: dict) -> None:
    """:func:`save_trained` for a model already serialised (a ``.keras`` file's bytes, e.g. from another process)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CARD_FILE).unlink(missing_ok=True)
    write_bytes(directory / MODEL_FILE, keras_bytes)
    write_json(directory / CARD_FILE, card)


def read_card(directory: str | os.PathLike) -> dict | None:
    path = Path(directory) / CARD_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise RobustError(f"{path} is not a readable model card (JSON): {exc}.") from None


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
                f"(with {MODEL_FILE} and {CARD_FILE}) or a .keras file."
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
        raise RobustError(f"{path} could not be loaded as a Keras model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}). Is it a complete .keras file?") from None
    if not isinstance(model, keras.Model):
        # A .keras archive can hold any saveable object, e.g. a single layer.
        raise RobustError(f"{path} holds a {type(model).__name__}, not a model. Expected a .keras file saved from "
                          "a keras.Model (model.save(path)).")
    return model, card
