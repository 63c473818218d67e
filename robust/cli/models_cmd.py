"""``robust models``: the model zoo, with what each accepts and where it comes from."""

from __future__ import annotations

import click

from robust.cli import main


@main.command("models")
def models_command() -> None:
    """List the models of the zoo (built-in and from plugins)."""
    from robust.models import registry

    for name, spec in sorted(registry().items()):
        options = ", ".join(f"{k}={v!r}" for k, v in spec.options.items()) or "none"
        click.echo(f"{name:<16} [{spec.kind}] {spec.description}")
        click.echo(f"{'':<16} inputs: {spec.input_shapes}")
        click.echo(f"{'':<16} options: {options}")
        click.echo(f"{'':<16} from: {spec.source}")
