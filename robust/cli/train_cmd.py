"""``robust train``: train a zoo model on a dataset and write model.keras + model.json."""

from __future__ import annotations

import json
from pathlib import Path

import click

from robust.cli import main
from robust.cli.common import Number, count, data_options, echo_err, parse_model_options
from robust.errors import RobustError, known_names


# --- adversarial training options (issue 8) --------------------------------------------------------
def adversarial_options(func):
    """``--adversarial`` and its ``--adv-*`` options; values are checked by AdversarialConfig."""
    options = [
        click.option("--adversarial", type=click.Choice(["pgd", "fgsm-rs", "trades"]), default=None,
                     help="Train on adversarial examples: pgd (Madry et al. 2018), fgsm-rs (Wong et al. 2020), "
                          "trades (Zhang et al. 2019)."),
        click.option("--adv-eps", type=Number(), default=None, metavar="E",
                     help="Radius of the training threat model, in the value range's units (e.g. 0.3)."),
        click.option("--adv-steps", type=count(None), default=None, metavar="K",
                     help="Attack steps per batch  [default: 10; fgsm-rs: 1]"),
        click.option("--adv-step-size", type=Number(), default=None, metavar="A",
                     help="Attack step size  [default: 2.5 x eps / K; fgsm-rs: 1.25 x eps]"),
        click.option("--adv-beta", type=Number(), default=None, metavar="B",
                     help="trades only: weight of the KL term  [default: 6]"),
        click.option("--adv-norm", type=click.Choice(["inf", "2"]), default=None,
                     help="Threat model norm  [default: inf]"),
        click.option("--adv-warmup", type=count(None), default=None, metavar="N",
                     help="Epochs over which eps ramps up linearly from 0  [default: 0]"),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def adversarial_config(adversarial, adv_eps, adv_steps, adv_step_size, adv_beta, adv_norm, adv_warmup):
    """The AdversarialConfig the options describe, ``None`` without ``--adversarial``, or a RobustError."""
    given = {"--adv-eps": adv_eps, "--adv-steps": adv_steps, "--adv-step-size": adv_step_size,
             "--adv-beta": adv_beta, "--adv-norm": adv_norm, "--adv-warmup": adv_warmup}
    if adversarial is None:
        stray = [name for name, value in given.items() if value is not None]
        if stray:
            raise RobustError(f"{', '.join(stray)} configure adversarial training and need --adversarial "
                              "pgd|fgsm-rs|trades; received them without it.")
        return None
    if adv_eps is None:
        raise RobustError(f"--adversarial {adversarial} needs --adv-eps E, the radius of the threat model "
                          "(e.g. --adv-eps 0.3 for MNIST in [0, 1]).")
    from robust.adversarial import AdversarialConfig

    return AdversarialConfig(method=adversarial, eps=adv_eps, steps=adv_steps, step_size=adv_step_size,
                             beta=adv_beta, norm=adv_norm or "inf", warmup=adv_warmup or 0)
# --- end of adversarial training options -------------------------------------------------------------


@main.command("train")
@click.argument("model_name", metavar="MODEL")
@data_options
@click.option("--epochs", type=count(1), default=None, metavar="N",
              help="Passes over the training images  [default: per model, chosen for the CPU]")
@click.option("--batch-size", type=count(1), default=128, show_default=True, metavar="N",
              help="Images per step.")
@click.option("--lr", type=Number(min=0, min_open=True), default=None, metavar="RATE",
              help="Initial learning rate of AdamW, decayed along a cosine  [default: per model]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, dir_okay=True), default=None, metavar="DIR",
              help="Folder for model.keras and model.json  [default: runs/MODEL_DATASET]")
@click.option("--option", "model_option", multiple=True, metavar="KEY=VALUE",
              help="Model option, repeatable, e.g. --option width=0.25 (see `robust models`).")
@click.option("--tensorboard", type=click.Path(file_okay=False, dir_okay=True), default=None, metavar="DIR",
              help="Write TensorBoard logs (epoch loss, accuracy, learning rate) to DIR.")
@click.option("--force", is_flag=True, help="Replace a model already in --out (otherwise refused).")
@click.option("--mixed-precision", is_flag=True,
              help="Compute in 16 bits: float16 on GPUs, bfloat16 on JAX (CPU too); else ignored on the CPU.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@adversarial_options
def train_command(model_name, dataset, data_path, limit, seed, epochs, batch_size, lr, out_dir, model_option,
                  tensorboard, force, mixed_precision, no_progress, **adversarial) -> None:
    """Train MODEL on a dataset; keep the best epoch; write DIR/model.keras and DIR/model.json.

    A tenth of the training images (class-balanced, seeded) is held out to
    choose the best epoch; the test split gives the clean accuracy in the
    card. Uses the GPUs TensorFlow sees (several: MirroredStrategy), the CPU
    otherwise. Files are written atomically: an interrupted run leaves none.

    Example: robust train lenet5 --dataset mnist --out runs/lenet5

    Adversarial training (--adversarial): every batch is attacked inside the
    train step, and the epoch with the best PGD-10 validation accuracy is kept.
    Example: robust train cnn_wong --dataset mnist --adversarial pgd --adv-eps 0.3
    """
    from robust.artifacts import check_writable
    from robust.data import DATASETS
    from robust.models import check_buildable, get_spec

    # Everything typed is checked before any data is read or anything is written.
    get_spec(model_name)
    if dataset is None:
        raise RobustError("robust train needs --dataset NAME (mnist, fashion_mnist or cifar10); "
                          "add --data PATH to read it from a file or folder.")
    if dataset not in DATASETS:
        raise RobustError(f"Unknown dataset {dataset!r}. Known datasets: {known_names(DATASETS)}.")
    info = DATASETS[dataset]
    options = check_buildable(model_name, info.image_shape, len(info.class_names), parse_model_options(model_option))
    adversarial = adversarial_config(**adversarial)
    out_dir = out_dir or f"runs/{model_name}_{dataset}"
    if not force:
        _refuse_to_overwrite(Path(out_dir))
    check_writable(out_dir, what="--out")
    if tensorboard is not None:
        check_writable(tensorboard, what="--tensorboard")

    from robust.artifacts import save_trained
    from robust.data import load_dataset
    from robust.training import train

    data = load_dataset(dataset, data_path, limit=limit, seed=seed)
    result = train(model_name, data, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                   model_options=options, tensorboard=tensorboard, mixed_precision=mixed_precision,
                   progress=not no_progress, data_path=data_path, limit=limit, log=echo_err,
                   adversarial=adversarial)
    card = result.card
    click.echo(f"{model_name} on {dataset}: clean test accuracy {card['test_accuracy']:.4f} "
               f"({card['test_size']:,} test images), best epoch {card['best_epoch']}/{card['epochs']}, "
               f"{card['seconds']:.1f} s on {card['device']}")
    save_trained(out_dir, result.model, card)
    click.echo(f"saved {out_dir}")


def _refuse_to_overwrite(out: Path) -> None:
    """A folder that already holds a model keeps it unless --force says otherwise; the message says what is there."""
    from robust.artifacts import CARD_FILE, MODEL_FILE

    present = [name for name in (MODEL_FILE, CARD_FILE) if (out / name).exists()]
    if not present:
        return
    try:
        card = json.loads((out / CARD_FILE).read_text(encoding="utf-8"))
        what = (f"a {card.get('model', '?')} model trained on {card.get('dataset', '?')} (test accuracy "
                f"{float(card['test_accuracy']):.4f})" if isinstance(card.get("test_accuracy"), (int, float))
                else f"a {card.get('model', '?')} model")
    except (OSError, ValueError, AttributeError):
        what = "a model"
    raise RobustError(f"--out {out} already holds {what}: {', '.join(present)}. Training would replace it. "
                      "Pass --force to replace it, or choose another --out.")
