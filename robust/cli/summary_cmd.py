"""``robust summary``: the per-layer table of shapes, activations, weights and memory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from robust.cli import main
from robust.cli.common import IntTuple, parse_model_options
from robust.errors import RobustError, known_names


@main.command("summary")
@click.argument("model_ref", metavar="MODEL")
@click.option("--input-shape", type=IntTuple(), default=None,
              help="Image shape H,W,C for a zoo model (or a saved model that takes any size), e.g. 224,224,3.")
@click.option("--classes", type=click.IntRange(min=2), default=None, metavar="N",
              help="Number of classes of a zoo model  [default: the dataset's, else 10]")
@click.option("--dataset", default=None, metavar="NAME",
              help="Take the input shape and classes from a dataset: mnist, fashion_mnist or cifar10.")
@click.option("--option", "model_option", multiple=True, metavar="KEY=VALUE",
              help="Zoo model option, repeatable, e.g. --option width=0.25.")
@click.option("--unsafe", is_flag=True, help="Load saved models that contain Python code (Lambda layers).")
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
def summary_command(model_ref, input_shape, classes, dataset, model_option, unsafe, as_json) -> None:
    """Per-layer output shape, activations, weights and biases of MODEL, and memory per image.

    MODEL is a zoo name (with --input-shape and --classes, or --dataset) or a
    saved model: a .keras file or a folder written by `robust train`.
    Activations count every layer's output for one image, the input image
    included; bytes are float32, forward+backward is twice forward.

    Example: robust summary vgg16 --input-shape 224,224,3 --classes 1000
    """
    from robust.summary import format_summary, summarize, summarize_architecture

    shape, n_classes = _shape_from_dataset(dataset, input_shape, classes)
    if _is_saved_model(model_ref):
        if classes is not None or model_option:
            raise RobustError("--classes and --option apply to zoo models; a saved model already has its "
                              f"classes and options. Received MODEL={model_ref!r}.")
        from robust.artifacts import load_model

        model, card = load_model(model_ref, unsafe=unsafe)
        summary = summarize(model, shape)
        if card is not None and not as_json:  # how it was trained (issue 8: adversarially, at which eps)
            from robust.adversarial import describe_training

            click.echo(f"Training: {describe_training(card)}")
    else:
        from robust.models import build_model, registry

        if model_ref not in registry():
            raise RobustError(f"Unknown model {model_ref!r}: no zoo model and no file or folder of that name. "
                              f"Known models: {known_names(registry())}; or give a .keras file or a folder "
                              "written by `robust train`.")

        if shape is None:
            raise RobustError(f"robust summary {model_ref} needs the image shape: --input-shape H,W,C "
                              "(with --classes N) or --dataset NAME, e.g. --input-shape 224,224,3 --classes 1000.")
        options = parse_model_options(model_option)
        # Counting needs shapes only: no weights are allocated, so any input size can be summarised.
        summary = summarize_architecture(lambda: build_model(model_ref, shape, n_classes or 10, **options))
    click.echo(json.dumps(summary.to_dict(), indent=2) if as_json else format_summary(summary))


def _shape_from_dataset(dataset, input_shape, classes):
    if dataset is None:
        return input_shape, classes
    from robust.data import DATASETS

    if dataset not in DATASETS:
        raise RobustError(f"Unknown dataset {dataset!r}. Known datasets: {known_names(DATASETS)}.")
    if input_shape is not None:
        raise RobustError("Give either --dataset or --input-shape, not both: the dataset fixes the image shape "
                          f"({'x'.join(map(str, DATASETS[dataset].image_shape))} for {dataset}).")
    info = DATASETS[dataset]
    return info.image_shape, classes or len(info.class_names)


def _is_saved_model(ref: str) -> bool:
    """A path (existing, or that looks like one) rather than a zoo name."""
    from robust.models import registry

    if ref in registry():
        return False
    return Path(ref).exists() or ref.endswith(".keras") or "/" in ref or "\\" in ref
