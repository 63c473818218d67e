"""Pieces every command shares: error handling, common options, value types."""

from __future__ import annotations

import sys

import click

from robust.errors import RobustError


class UserError(click.ClickException):
    """A :class:`RobustError` at the CLI edge: message on stderr, exit code 2."""

    exit_code = 2

    def format_message(self) -> str:
        return self.message


class RobustGroup(click.Group):
    """A click group whose commands turn RobustError into exit code 2 with a clear message."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except RobustError as exc:
            raise UserError(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("Interrupted; nothing half-written was left behind.", err=True)
            sys.exit(130)


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
        click.option("--seed", type=int, default=0, show_default=True, help="Random seed."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


class FloatList(click.ParamType):
    """A comma-separated list of floats, e.g. ``0,0.05,0.1``."""

    name = "FLOATS"

    def convert(self, value, param, ctx):
        if isinstance(value, (list, tuple)):
            return [float(v) for v in value]
        try:
            return [float(v) for v in str(value).split(",") if v.strip() != ""]
        except ValueError:
            self.fail(f"expected comma-separated numbers such as 0,0.05,0.1; received {value!r}.", param, ctx)


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
    """``--option depth=3 --option batch_norm=true`` -> ``{"depth": 3, "batch_norm": True}``."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise RobustError(f"--option expects KEY=VALUE such as depth=3; received {pair!r}.")
        key, raw = pair.split("=", 1)
        out[key.strip()] = _literal(raw.strip())
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
