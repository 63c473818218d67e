"""``robust train``: train a zoo model on a dataset and write model.keras + model.json."""

from __future__ import annotations

import click

from robust.cli import main
from robust.cli.common import data_options, echo_err, parse_model_options
from robust.errors import RobustError


@main.command("train")
@click.argument("model_name", metavar="MODEL")
@data_options
@click.option("--epochs", type=click.IntRange(min=1), default=None, metavar="N",
              help="Passes over the training images  [default: per model, chosen for the CPU]")
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True, metavar="N",
              help="Images per step.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, metavar="RATE",
              help="Initial learning rate of AdamW, decayed along a cosine  [default: per model]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, dir_okay=True), default=None, metavar="DIR",
              help="Folder for model.keras and model.json  [default: runs/MODEL_DATASET]")
@click.option("--option", "model_option", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable, e.g. --option width=0.25 (see `robust models`).")
@click.option("--tensorboard", type=click.Path(file_okay=False, dir_okay=True), default=None, metavar="DIR",
              help="Write TensorBoard logs (epoch loss, accuracy, learning rate) to DIR.")
@click.option("--mixed-precision", is_flag=True, help="Compute in float16 on GPUs (ignored on the CPU).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
def train_command(model_name, dataset, data_path, limit, seed, epochs, batch_size, lr, out_dir, model_option,
                  tensorboard, mixed_precision, no_progress) -> None:
    """Train MODEL on a dataset; keep the best epoch; write DIR/model.keras and DIR/model.json.

    A tenth of the training images (class-balanced, seeded) is held out to
    choose the best epoch; the test split gives the clean accuracy in the
    card. Uses the GPUs TensorFlow sees (several: MirroredStrategy), the CPU
    otherwise. Files are written atomically: an interrupted run leaves none.

    Example: robust train lenet5 --dataset mnist --out runs/lenet5
    """
    from robust.models import get_spec

    get_spec(model_name)  # an unknown model fails before any data is read
    if dataset is None:
        raise RobustError("robust train needs --dataset NAME (mnist, fashion_mnist or cifar10); "
                          "add --data PATH to read it from a file or folder.")
    options = parse_model_options(model_option)

    from robust.artifacts import save_trained
    from robust.data import load_dataset
    from robust.training import train

    out_dir = out_dir or f"runs/{model_name}_{dataset}"
    data = load_dataset(dataset, data_path, limit=limit, seed=seed)
    result = train(model_name, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, model_options=options, tensorboard=tensorboard, mixed_precision=mixed_precision,
                   progress=not no_progress, data_path=data_path, limit=limit, log=echo_err)
    card = result.card
    click.echo(f"{model_name} on {dataset}: clean test accuracy {card['test_accuracy']:.4f} "
               f"({card['test_size']:,} test images), best epoch {card['best_epoch']}/{card['epochs']}, "
               f"{card['seconds']:.1f} s on {card['device']}")
    save_trained(out_dir, result.model, card)
    click.echo(f"saved {out_dir}")
