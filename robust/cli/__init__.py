"""The ``robust`` command line: a thin click layer over the library.

Each command lives in its own module of this package; they parse and
validate options, call the library and print. A :class:`robust.RobustError`
becomes a one-paragraph message and exit code 2, never a traceback; any other
exception one paragraph and exit code 1 (``robust --debug`` shows its traceback).
"""

from __future__ import annotations

import os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notes) is noise on a
# command line; set before any command imports TensorFlow. A user's own
# setting wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import click  # noqa: E402

from robust import __version__, check_keras_backend  # noqa: E402
from robust.cli.common import RobustGroup, native_startup_quiet  # noqa: E402


@click.group(cls=RobustGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="robust")
@click.option("--debug", is_flag=True, help="Show the full traceback of any error (for bug reports).")
def main(debug: bool) -> None:
    """Adversarial-robustness testing for Keras models.

    Train the model zoo, attack it with FGSM, PGD and fooling images, and
    compare ConvNets with fully connected baselines in a report.
    """
    # Here, inside the group's error handling, an unknown KERAS_BACKEND is exit code 2 with the list.
    check_keras_backend()
    # Start the backend (and probe its devices) now, with its native start-up lines held back: on a
    # machine without a GPU, TensorFlow's would print on every command (and an "E0000 ... cuInit" error).
    with native_startup_quiet():
        from robust import backend

        backend.device()


# Command modules register themselves on `main` when imported.
from robust.cli import models_cmd, run_cmd, summary_cmd, train_cmd  # noqa: E402,F401

for _optional in ("attack_cmd", "eval_cmd", "visualize_cmd"):
    # Commands added by later work; the group works without them.
    try:
        __import__(f"robust.cli.{_optional}")
    except ModuleNotFoundError as exc:
        if exc.name != f"robust.cli.{_optional}":
            raise
