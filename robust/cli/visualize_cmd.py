"""``robust visualize``: what each unit of a layer responds to (activation maximisation, top images)."""

from __future__ import annotations

import re
from pathlib import Path

import click
import numpy as np

from robust.cli import main
from robust.cli.common import Number, ValueRange, count, data_options, echo_err
from robust.errors import RobustError


@main.command("visualize")
@click.argument("model_ref", metavar="MODEL")
@click.option("--layers", default=None, metavar="NAME,...|conv|all",
              help="Layers to show  [default: every conv layer; for a model without any, its hidden dense layers]")
@click.option("--units", type=count(1), default=8, show_default=True, metavar="N",
              help="The first N units (filters) of each layer.")
@click.option("--top", type=count(0), default=9, show_default=True, metavar="K",
              help="Top activating test images per unit (0: none, no data needed).")
@click.option("--crop/--no-crop", default=None,
              help="Crop top images to the unit's receptive field  [default: where the layer has spatial output]")
@click.option("--steps", type=count(1), default=200, show_default=True, help="Ascent steps.")
@click.option("--step-size", type=Number(), default=None,
              help="Pixel change per step  [default: 2% of the value range]")
@click.option("--l2-decay", type=Number(), default=0.01, show_default=True, help="Shrink towards the base per step.")
@click.option("--blur-every", type=count(None), default=4, show_default=True,
              help="Gaussian blur every N steps (0: off).")
@click.option("--blur-sigma", type=Number(), default=0.5, show_default=True, help="Blur width in pixels.")
@click.option("--jitter", type=count(None), default=1, show_default=True,
              help="Random shift of up to N pixels per step.")
@click.option("--norm-pct", type=Number(), default=0.1, show_default=True,
              help="Fraction of pixels with the smallest norm reset with each blur.")
@click.option("--contribution-pct", type=Number(), default=0.1, show_default=True,
              help="Fraction of pixels with the smallest contribution reset with each blur.")
@click.option("--objective", type=click.Choice(["center", "mean"]), default="center", show_default=True,
              help="A conv filter's activation at the centre position, or its mean over positions.")
@data_options
@click.option("--batch-size", type=count(1), default=256, show_default=True,
              help="Images per batch when ranking the test images.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Folder for one PNG per layer and visualize.json  [default: visualize/ beside MODEL]")
@click.option("--value-range", "value_range_opt", type=ValueRange(), default=None,
              help="Pixel range LO,HI the model expects, when neither its card nor a leading Rescaling layer says.")
@click.option("--unsafe", is_flag=True, help="Load a .keras file that contains code (Lambda layers).")
def visualize_command(model_ref, layers, units, top, crop, steps, step_size, l2_decay, blur_every, blur_sigma,
                      jitter, norm_pct, contribution_pct, objective, dataset, data_path, limit, seed, batch_size,
                      out_dir, value_range_opt, unsafe) -> None:
    """Show what the units of MODEL's layers respond to.

    Per layer and each of its first N units: an image grown from noise to
    excite the unit (Yosinski et al. 2015: L2 decay, blur, jitter, pixel
    clipping), and the K test images that excite it most, cropped to its
    receptive field (Zeiler & Fergus 2014). MODEL is any reference `robust
    attack` takes. Writes layer-NAME.png per layer and visualize.json.

    Example: robust visualize runs/lenet5 --layers c1,c3 --units 6 --top 8
    """
    from robust.artifacts import check_writable, write_json
    from robust.cli.attack_cmd import _default_out, _load, _versions
    from robust.visualize import ActivationMaximization, top_images

    grow = ActivationMaximization(steps=steps, step_size=step_size, l2_decay=l2_decay, blur_every=blur_every,
                                  blur_sigma=blur_sigma, jitter=jitter, norm_pct=norm_pct,
                                  contribution_pct=contribution_pct, objective=objective, seed=seed)
    out = Path(out_dir) if out_dir else _default_out(model_ref, "visualize")
    check_writable(out, what="--out" if out_dir else "the output folder")
    model, card = _load(model_ref, unsafe, value_range_opt)
    lo, hi = (float(v) for v in card.get("value_range") or (0.0, 1.0))
    names, chosen, crop_mode = _choose(model, model_ref, layers, units, top, crop)
    x = _test_images(model, card, model_ref, dataset, data_path, limit, seed, (lo, hi)) if top else None
    tops = top_images(model, x, chosen, k=min(top, len(x)), crop=crop_mode, batch_size=batch_size) if top else {}
    grown = {}
    for name in names:  # all the work first, then the files: an error leaves nothing half-written
        grown[name] = result = grow(model, [(name, u) for u in chosen[name]], value_range=(lo, hi))
        echo_err(_gain_line(name, result))
    rows = {name: _layer_report(model, name, grown[name], tops.get(name), (lo, hi), out) for name in names}
    write_json(out / "visualize.json", {
        "command": "visualize", "model": str(model_ref), "value_range": [lo, hi], "params": grow.params,
        "top": top, "crop": crop_mode, "layers": rows, "versions": _versions(),
    })
    click.echo(f"wrote {out}/ (visualize.json and {len(rows)} PNG files: "
               + ", ".join(r["png"] for r in rows.values()) + ")")


def _gain_line(name: str, result) -> str:
    """What the ascent reached for a layer's units, with dead units named (their images mean nothing)."""
    from robust.visualize import unit_gains

    gains, dead = unit_gains(result.start, result.value)
    units = [u for _, u in result.targets]
    line = f"{name}: {len(units)} units in {result.seconds:.1f} s"
    ratios = gains[~np.isnan(gains)]
    if len(ratios):
        line += f"; activation x{ratios.min():.1f} or more over the starting noise ({len(ratios)} units)"
    rising = int(np.sum(np.isnan(gains) & ~dead))
    if rising:
        line += f"; {rising} unit(s) rose from zero or below, where a ratio means nothing"
    if dead.any():
        line += (f"\nwarning: {name}: {int(dead.sum())} of {len(units)} units are dead (units "
                 f"{', '.join(str(units[i]) for i in np.flatnonzero(dead))}): no input made them fire, so their "
                 "grown images are noise, not what they detect; they are marked 'dead' in the PNG and the JSON")
    return line


def _choose(model, model_ref, layers, units, top, crop):
    """The layers, their units and the crop mode, checked before any work."""
    from robust.visualize import _crop_field, choose_layers, why_not_visualizable

    reason = why_not_visualizable(model)
    if reason:
        raise RobustError(f"Cannot visualise {model_ref}: {reason}. robust visualize reads a functional or "
                          "Sequential Keras model's layers on one image input.")
    names = choose_layers(model, layers)
    chosen = {n: list(range(min(units, _units(model, n)))) for n in names}
    crop_mode = "auto" if crop is None else crop
    if top and crop_mode is True:
        for n in names:
            _crop_field(model, n, True)
    return names, chosen, crop_mode


def _units(model, name: str) -> int:
    from robust.visualize import _num_units, get_layer

    return _num_units(get_layer(model, name))


def _test_images(model, card, model_ref, dataset, data_path, limit, seed, value_range):
    from robust.data import load_dataset
    from robust.models import check_model_input
    from robust.data import scale_to

    dataset = dataset or card.get("dataset")
    if dataset is None:
        raise RobustError(f"{model_ref} does not say what data it was trained on, and the top images come from a "
                          "test split. Pass --dataset mnist, fashion_mnist or cifar10 (with --data PATH for your "
                          "own files), or --top 0 for the grown images only.")
    data_path = data_path or (card.get("data_path") if dataset == card.get("dataset") else None)
    data = load_dataset(dataset, data_path, limit=limit, seed=seed)
    check_model_input(model, data.input_shape, data_name=f"the {dataset} data")
    echo_err(f"top images from {len(data.x_test):,} test images of {data.describe()}")
    return scale_to(data.x_test, value_range)


def _layer_report(model, name, result, tops, value_range, out: Path) -> dict:
    """Write the layer's PNG; return its JSON entry."""
    from robust.report import figures
    from robust.summary import receptive_fields

    lo, hi = value_range
    rf = receptive_fields(model).get(name)
    from robust.visualize import unit_gains

    gains, dead = unit_gains(result.start, result.value)
    png = f"layer-{re.sub(r'[^A-Za-z0-9_.-]+', '_', name)}.png"
    crops = tops.crops if tops is not None and tops.crops is not None else None
    from robust.visualize import centre_field, rf_vector

    grown = centre_field(model, name, result.images) if result.params["objective"] == "center" else result.images
    figures.unit_grid(name, [u for _, u in result.targets], (grown - lo) / (hi - lo),
                      None if crops is None else (crops - lo) / (hi - lo), None if tops is None else tops.value,
                      out / png, activations=(result.start, result.value),
                      receptive_field=figures.rf_text(rf_vector(rf), rf.image if rf else None))
    units = []
    for i, (_, u) in enumerate(result.targets):
        entry = {"unit": u, "start_activation": float(result.start[i]), "activation": float(result.value[i]),
                 "gain": None if np.isnan(gains[i]) else float(gains[i]), "dead": bool(dead[i])}
        if tops is not None:
            entry["top"] = [{"image": int(tops.index[i, k]), "activation": float(tops.value[i, k]),
                             "position": [int(p) for p in tops.position[i, k]],
                             "box": [int(b) for b in tops.box[i, k]]} for k in range(tops.index.shape[1])]
        units.append(entry)
    return {"png": png, "receptive_field": rf.to_dict() if rf else None, "units": units}

