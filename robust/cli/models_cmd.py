"""``robust models``: the model zoo and the ready models of plugins, with where each comes from."""

from __future__ import annotations

from pathlib import Path

import click

from robust.cli import main


@main.command("models")
@click.option("--trained", "trained", type=click.Path(exists=True, file_okay=False), default=None, metavar="DIR",
              help="Also list the models trained under DIR (robust train folders, e.g. runs/ or a study folder): "
                   "their clean accuracy and how they were trained (standard, or adversarially at which eps).")
def models_command(trained) -> None:
    """List the models: zoo architectures to train, and ready models to evaluate (built-in and from plugins).

    With --trained DIR, also the trained models found under DIR, each with how it was trained.
    """
    from robust.models.registry import entries

    if trained is not None:
        _list_trained(Path(trained))
        return

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


def _list_trained(root: Path) -> None:
    """One line per ``robust train`` folder under ``root``: model, dataset, accuracy, training."""
    from robust.adversarial import describe_training
    from robust.artifacts import CARD_FILE, read_card

    folders = sorted({p.parent for p in root.rglob(CARD_FILE)} | ({root} if (root / CARD_FILE).is_file() else set()))
    folders = [f for f in folders if (f / "model.keras").is_file()]
    if not folders:
        click.echo(f"No trained models under {root} (a `robust train` folder holds model.keras and model.json).")
        return
    unreadable = 0
    for folder in folders:
        try:  # one damaged card is reported on its own line; the other models are still listed
            card = read_card(folder)
            accuracy = card.get("test_accuracy")
            accuracy = f"{accuracy:.4f}" if isinstance(accuracy, (int, float)) else "unknown (not in the card)"
            line = (f"  {card.get('model', '?')} on {card.get('dataset', '?')}, clean test accuracy {accuracy}\n"
                    f"  training: {describe_training(card)}")
        except Exception as exc:  # noqa: BLE001  a card written by hand can hold anything
            unreadable += 1
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            line = f"  skipped: its card cannot be read ({reason})"
        click.echo(f"{folder}\n{line}")
    if unreadable:
        click.echo(f"{unreadable} of {len(folders)} folders have a card robust cannot read; the others are listed.",
                   err=True)
