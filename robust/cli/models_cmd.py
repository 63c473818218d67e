"""``robust models``: the model zoo and the ready models of plugins, with where each comes from."""

from __future__ import annotations

import click

from robust.cli import main


@main.command("models")
def models_command() -> None:
    """List the models: zoo architectures to train, and ready models to evaluate (built-in and from plugins)."""
    from robust.models.registry import entries

    reg = entries()
    for name, spec in sorted(reg.specs.items()):
        click.echo(f"{name:<16} [{spec.kind}] {spec.description}")
        click.echo(f"{'':<16} inputs: {spec.input_shapes}")
        declared = spec.declared()
        click.echo(f"{'':<16} options:" + ("" if declared else " none"))
        for key, option in declared.items():
            click.echo(f"{'':<18} {key}={option.describe()}" + (f": {option.help}" if option.help else ""))
        click.echo(f"{'':<16} from: {spec.source}")
    if reg.ready:
        click.echo("\nReady models (trained; evaluate with `robust eval NAME`):")
        for name, plugin in sorted(reg.ready.items()):
            click.echo(f"{name:<16} [ready] {plugin.description or '(no description)'}")
            click.echo(f"{'':<16} from: {plugin.source}")
    if reg.broken:
        click.echo("\nSkipped plugins (the other models are not affected):")
        for name, why in sorted(reg.broken.items()):
            click.echo(f"{name:<16} {why}")
