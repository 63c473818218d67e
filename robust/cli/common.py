"""Pieces every command shares: error handling, common options, value types."""

from __future__ import annotations

import contextlib
import math
import os
import re
import sys
import tempfile
import traceback
import warnings

import click

from robust.errors import MAX_COUNT, RobustError


#: What TensorFlow's C++ runtime writes straight to the process's stderr (below Python, past
#: TF_CPP_MIN_LOG_LEVEL) while it starts on a machine without a GPU: facts about the build, not messages.
_NATIVE_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|Could not find cuda drivers|"
    r"failed call to cuInit|Unable to register cu(DNN|FFT|BLAS) factory|TF-TRT Warning|computation placer "
    r"already registered|This TensorFlow binary is optimized|cpu_feature_guard|Attempting to register factory")


@contextlib.contextmanager
def native_startup_quiet():
    """Hold back the start-up lines native libraries write to file descriptor 2 inside the block.

    TensorFlow logs through absl before absl is initialised, so neither Python's logging nor
    ``TF_CPP_MIN_LOG_LEVEL`` reaches those lines. Inside the block, descriptor 2 goes to a temporary
    file; afterwards every line that is not known start-up noise is written to stderr, so a real
    error still shows.
    """
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 to redirect (an embedded interpreter): nothing to hold back
        yield
        return
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().decode(errors="replace").splitlines()
                    if line.strip() and not _NATIVE_NOISE.search(line)]
            if kept:
                click.echo("\n".join(kept), err=True)


class UserError(click.ClickException):
    """A :class:`RobustError` at the CLI edge: message on stderr, exit code 2."""

    exit_code = 2

    def format_message(self) -> str:
        return self.message


class Crash(click.ClickException):
    """An unexpected exception at the CLI edge: one paragraph on stderr, exit code 1, a hint to use --debug."""

    exit_code = 1

    def format_message(self) -> str:
        return self.message


def _crash_message(ctx: click.Context, exc: BaseException) -> str:
    sub = ctx.invoked_subcommand
    command = f"robust {sub}" if sub else "robust"
    detail = str(exc).strip().splitlines()
    what = f"{type(exc).__name__}: {detail[0][:300]}" if detail else type(exc).__name__
    return (f"{command} stopped on an unexpected error ({what}). This is a bug in robust, or in a "
            "plugin or model code it ran, not a mistake robust could explain in your input; files that were being "
            f"written were left as they were. Rerun with `robust --debug {sub or 'COMMAND'} ...` to see the "
            "traceback, and report it with that traceback.")


def _os_message(exc: OSError) -> str:
    where = f" {exc.filename}" if exc.filename else ""
    return (f"Cannot use{where}: {exc.strerror or exc}. Expected a file or folder robust can read and write; "
            "check the path, its permissions and the free space, or choose another location.")


class RobustGroup(click.Group):
    """A click group whose commands turn RobustError into exit code 2 with a clear message, and any other
    exception into one readable paragraph with exit code 1 (the traceback with ``robust --debug``)."""

    def invoke(self, ctx):
        debug = bool(ctx.params.get("debug"))
        try:
            with warnings.catch_warnings():
                if not debug:  # a warning is a message to the user: one line, not Python's file:line and source
                    warnings.showwarning = _show_warning
                return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing half-written was left behind.", err=True)
            sys.exit(130)
        except RobustError as exc:
            _show_traceback(debug)
            raise UserError(str(exc)) from None
        except Exception as exc:
            _show_traceback(debug)
            if isinstance(exc, OSError) and exc.filename:  # the file system refused: permissions, space, a lost path
                raise UserError(_os_message(exc)) from None
            raise Crash(_crash_message(ctx, exc)) from None


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    text = str(message).strip()
    click.echo(text if text.lower().startswith("warning") else f"warning: {text}", err=True)


def _show_traceback(debug: bool) -> None:
    if debug:
        traceback.print_exc(file=sys.stderr)


def data_options(func):
    """--dataset, --data, --limit and --seed, shared by every command that reads images."""
    options = [
        click.option("--dataset", "dataset", default=None, metavar="NAME",
                     help="Dataset: mnist, fashion_mnist or cifar10."),
        click.option("--data", "data_path", default=None, metavar="PATH",
                     type=click.Path(dir_okay=True, file_okay=True, path_type=str),
                     help="Explicit data: a Keras-layout .npz, a folder of MNIST IDX files, or the "
                          "CIFAR-10 python batch folder. Otherwise $ROBUST_DATA_DIR/<dataset>.npz, "
                          "the Keras loader, and (MNIST) the subset shipped with the package."),
        click.option("--limit", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Use class-balanced, seeded subsets of at most N images of each split, for quick runs."),
        seed_option(),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def seed_option():
    """--seed: an integer numpy, Python and TensorFlow all accept, checked before any work starts."""
    from robust.data import MAX_SEED

    return click.option("--seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, metavar="N",
                        help="Random seed.")


class Number(click.FloatRange):
    """A finite number, optionally in a range: click's FLOAT takes 'nan' and 'inf', which compare false with
    every bound and so would slip through a range check (``--fail-under nan`` would pass every gate)."""

    name = "number"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"expected a finite number{self._describe_range_suffix()}; received {value!r}.", param, ctx)
        return number

    def _describe_range_suffix(self) -> str:
        return "" if self.min is None and self.max is None else f" in the range {self._describe_range()}"


def count(minimum: int | None = 1) -> click.IntRange:
    """An integer option (steps, queries, images): at least ``minimum``, at most :data:`MAX_COUNT`.

    ``minimum=None`` leaves the lower bound to the object the value goes to (an attack names its own limits)."""
    return click.IntRange(minimum, MAX_COUNT)


class FloatList(click.ParamType):
    """A comma-separated list of floats, e.g. ``0,0.05,0.1``."""

    name = "FLOATS"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        items = str(value).split(",")
        out = []
        for i, item in enumerate(items, start=1):
            if not item.strip():
                self.fail(f"expected comma-separated numbers such as 0,0.05,0.1; received {value!r}, whose item "
                          f"{i} of {len(items)} is empty. Remove the extra comma.", param, ctx)
            try:
                number = float(item)
            except ValueError:
                self.fail(f"expected comma-separated numbers such as 0,0.05,0.1; received {value!r} "
                          f"({item.strip()!r} is not a number).", param, ctx)
            if not math.isfinite(number):
                self.fail(f"expected finite numbers such as 0,0.05,0.1; received {value!r}.", param, ctx)
            out.append(number)
        return out


class IntTuple(click.ParamType):
    """A comma-separated tuple of positive ints, e.g. an input shape ``28,28,1``."""

    name = "H,W,C"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            out = tuple(int(v) for v in str(value).replace("x", ",").split(","))
        except ValueError:
            out = ()
        if not out or any(v < 1 for v in out):
            self.fail(f"expected positive integers separated by commas such as 28,28,1; received {value!r}.",
                      param, ctx)
        return out


def parse_model_options(pairs: tuple[str, ...]) -> dict:
    """``--option depth=3 --option batch_norm=true`` -> ``{"depth": 3, "batch_norm": True}``.

    Values are parsed as literals here; their types and ranges are checked
    against the model's declared options (:func:`robust.models.validate_options`).
    """
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise RobustError(f"--option expects KEY=VALUE such as depth=3; received {pair!r}.")
        key, raw = pair.split("=", 1)
        key = key.strip()
        if not key:
            raise RobustError(f"--option expects KEY=VALUE such as depth=3; received {pair!r} (no KEY).")
        if key in out:
            raise RobustError(f"--option {key} is given twice ({key}={out[key]!r} and {pair!r}); give it once.")
        out[key] = _literal(raw.strip())
    return out


def _literal(raw: str):
    low = raw.lower()
    if low in ("true", "yes"):
        return True
    if low in ("false", "no"):
        return False
    if low in ("none", "null"):
        return None
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def echo_err(message: str) -> None:
    click.echo(message, err=True)


class ValueRange(click.ParamType):
    """``LO,HI`` such as ``0,255`` or ``-1,1``."""

    name = "LO,HI"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            lo, hi = (float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"expected two numbers LO,HI such as 0,255; received {value!r}.", param, ctx)
        if not lo < hi:
            self.fail(f"expected LO < HI such as 0,255; received {value!r}.", param, ctx)
        return lo, hi


def check_resume(out, resume: bool) -> None:
    """``--resume`` needs a run to continue: a folder that never ran is named instead of silently started."""
    from pathlib import Path

    out = Path(out)
    if resume and not ((out / "spec.json").exists() or (out / "records").exists()):
        what = "does not exist" if not out.exists() else "holds no run (no spec.json)"
        raise RobustError(f"--resume continues an interrupted run, but {out} {what}. Expected the folder of a "
                          "run that was started before; drop --resume to start a new run there.")


def check_fits(loaded, dataset: str) -> None:
    """The model must take the dataset's images and have one output per class."""
    from robust.data import DATASETS

    info = DATASETS[dataset]
    shape = "x".join("?" if d is None else str(d) for d in loaded.input_shape)
    if len(loaded.input_shape) != len(info.image_shape) or any(
            d is not None and d != e for d, e in zip(loaded.input_shape, info.image_shape)):
        raise RobustError(f"{loaded.name!r} takes images of shape {shape} but {dataset} images are "
                          f"{'x'.join(map(str, info.image_shape))}. Evaluate it on the dataset it was built for.")
    if loaded.num_classes != len(info.class_names):
        raise RobustError(f"{loaded.name!r} has {loaded.num_classes} outputs but {dataset} has "
                          f"{len(info.class_names)} classes. Evaluate it on the dataset it was trained on.")


def fail_under_option(func):
    """``--fail-under X``: the CI gate shared by robust attack and robust eval."""
    return click.option("--fail-under", "fail_under", type=Number(0.0, 1.0), default=None, metavar="X",
                        help="Exit with status 1 when robust accuracy (the lowest accuracy under attack at any "
                             "eps > 0) is below X, e.g. 0.80; a gate for CI pipelines.")(func)


def enforce_fail_under(rows: list[dict], threshold: float | None) -> None:
    """Exit 1 with a one-line reason when the worst accuracy under attack at eps > 0 is below ``threshold``."""
    if threshold is None:
        return
    attacked = [r for r in rows if r["eps"] > 0] or rows
    worst = min(attacked, key=lambda r: r["adversarial_accuracy"])
    acc = worst["adversarial_accuracy"]
    where = f"{worst.get('attack_key') or worst['attack']}, eps={worst['eps']:g}"
    if acc < threshold:
        click.echo(f"FAIL: robust accuracy {100 * acc:.1f}% ({where}, {worst['n']} images) is below "
                   f"--fail-under {100 * threshold:g}%.", err=True)
        raise click.exceptions.Exit(1)
    click.echo(f"PASS: robust accuracy {100 * acc:.1f}% ({where}) is at least --fail-under {100 * threshold:g}%.",
               err=True)


def quiet_option(func):
    """``--quiet``: a study prints only its result (robust run, robust eval)."""
    return click.option("--quiet", "-q", is_flag=True,
                        help="Print only the robust-accuracy lines and where the report went (no progress, no "
                             "per-model lines); warnings and errors still show.")(func)


def study_echo(quiet: bool):
    """Where a study's lines go: the console, or nowhere under ``--quiet`` (see :func:`echo_result`)."""
    return (lambda line: None) if quiet else click.echo


def echo_result(results: dict, out) -> None:
    """What ``--quiet`` keeps: the robust-accuracy headline and the report's path."""
    from pathlib import Path

    from robust.report.robustness import headline_lines

    for line in headline_lines(results):
        click.echo(line)
    click.echo(f"Report: {Path(out) / 'report.html'}")


def ray_options(func):
    """``--ray [ADDRESS]`` and ``--shard-size N``: run the study's cells on a Ray cluster (robust run, robust eval)."""
    func = click.option("--shard-size", "shard_size", type=click.IntRange(min=1), default=None, metavar="N",
                        help="With --ray: test images per attack task [default: 1000].")(func)
    return click.option("--ray", "ray_address", is_flag=False, flag_value="", default=None, metavar="[ADDRESS]",
                        help="Compute the cells as Ray tasks: on the cluster at ADDRESS, else RAY_ADDRESS, else a "
                             "new local Ray. Needs pip install \"robust[ray]\". Put it after the other arguments.")(func)


def study_mapper(ray_address: str | None, shard_size: int | None):
    """The study's engine as a context manager: in-process without --ray, else a connected RayMapper."""
    import contextlib
    import os

    if ray_address is None:
        if shard_size is not None:
            raise RobustError(f"--shard-size {shard_size} splits attacks into Ray tasks; it needs --ray.")
        from robust.study import in_process

        return contextlib.nullcontext(in_process)
    if ray_address.endswith(".toml") or os.path.isfile(ray_address):
        raise RobustError(f"--ray takes an optional cluster address, and received {ray_address!r}, which looks like "
                          "a file: put the spec before --ray (robust run SPEC --ray), or give an address such as "
                          "host:6379.")
    from robust.ray_engine import DEFAULT_SHARD_SIZE, RayMapper

    return RayMapper(address=ray_address or None, shard_size=shard_size or DEFAULT_SHARD_SIZE)
