"""``robust attack``, ``robust fool`` and ``robust attacks``: run the attacks from the command line."""

from __future__ import annotations

import inspect
from pathlib import Path

import click
import numpy as np

from robust.cli import main
from robust.cli.common import (
    FloatList,
    Number,
    ValueRange,
    count,
    data_options,
    echo_err,
    enforce_fail_under,
    fail_under_option,
    seed_option,
)
from robust.errors import RobustError, known_names


def _load(model_ref: str, unsafe: bool, value_range=None):
    """Any model reference `robust eval` takes, with its card (if a train folder) and settled value range."""
    from robust.artifacts import read_card
    from robust.plugins import load_model_ref

    loaded = load_model_ref(model_ref, value_range=value_range, unsafe=unsafe)
    card = dict((read_card(model_ref) if Path(model_ref).is_dir() else None) or {})
    card["value_range"] = list(loaded.value_range)
    if loaded.class_names and not card.get("class_names"):
        card["class_names"] = list(loaded.class_names)
    if loaded.dataset and not card.get("dataset"):
        card["dataset"] = loaded.dataset
    echo_err(loaded.describe())
    return loaded.model, card


def _no_dataset(model_ref: str) -> str:
    """How to call a model reference without a model card, for messages."""
    from robust.artifacts import CARD_FILE

    if Path(model_ref).is_dir() and (Path(model_ref) / CARD_FILE).is_file():
        return (f"The model card {Path(model_ref) / CARD_FILE} names no dataset (its 'dataset' field is missing or "
                "empty)")
    if Path(model_ref).is_dir():
        return f"{model_ref} is a folder without {CARD_FILE} (the model card `robust train` writes)"
    return f"{model_ref} is a .keras file without a model card"


def _card_data_path(card: dict, model_ref: str) -> str | None:
    """The --data path the model was trained with, as its card records it, when it is still there."""
    path = card.get("data_path")
    if path is None:
        return None
    if not isinstance(path, str):
        raise RobustError(f"The model card of {model_ref} records data_path={path!r}; expected a file or folder "
                          "path (or null). Pass --data PATH to choose the data.")
    if not Path(path).exists():
        raise RobustError(f"The model card of {model_ref} says the model was trained on --data {path}, which no "
                          "longer exists. Pass --data PATH with the same data (moved), or another --dataset.")
    return path


def _default_out(model_ref: str, name: str) -> Path:
    ref = Path(model_ref)
    return (ref if ref.is_dir() else ref.parent) / name


def _class_names(card: dict, dataset: str | None, num_classes: int | None = None) -> list[str] | None:
    if card.get("class_names"):
        return [str(c) for c in card["class_names"]]
    if dataset:
        from robust.data import DATASETS

        if dataset in DATASETS:
            return list(DATASETS[dataset].class_names)
    return [str(i) for i in range(num_classes)] if num_classes else None


def _parse_class(value: str, class_names: list[str] | None, option: str) -> int:
    """A class index, or a class name of the model's dataset; it must be one of the model's classes."""
    text = str(value).strip()
    if class_names and text in class_names and not text.isdigit():
        return class_names.index(text)
    known = f" Known class names: {', '.join(class_names)}." if class_names else ""
    try:
        index = int(text)
    except ValueError:
        raise RobustError(f"{option} expects a class index (0, 1, ...) or a class name; received {value!r}.{known}")
    if index < 0 or (class_names and index >= len(class_names)):
        top = f"0 to {len(class_names) - 1}" if class_names else "0 or more"
        raise RobustError(f"{option} expects a class index from {top} (the model's classes); received {value!r}.")
    return index


def _parse_classes(text: str, class_names: list[str] | None) -> list[int]:
    """``--classes 3,7`` (indices or names): every item a class of the model, none empty, none twice."""
    items = text.split(",")
    if any(not item.strip() for item in items):
        raise RobustError(f"--classes expects 'all' or classes separated by single commas such as 3,7; received "
                          f"{text!r}, which has an empty item.")
    chosen = [_parse_class(item, class_names, "--classes") for item in items]
    if len(set(chosen)) != len(chosen):
        raise RobustError(f"--classes names a class twice; received {text!r}. Use --seeds for more images per class.")
    return chosen


def _versions() -> dict:
    from robust.backend import versions

    return versions()


@main.command("attack")
@click.argument("model_ref", metavar="MODEL")
@click.option("--attack", "attack_name", default="pgd", show_default=True, metavar="NAME",
              help="A registered attack: fgsm, pgd, apgd, apgd-t, square, auto (the ensemble), the minimum-norm "
                   "deepfool, fmn and cw, or a plugin (see `robust attacks`).")
@click.option("--eps", type=FloatList(), default=None,
              help="Comma-separated radii of the norm ball, in the units of the model's value range (0,8,16 for "
                   "0-255 pixels)  [default: 0.05,0.1,0.3 of the value range's width; a minimum-norm attack: "
                   "none, each image's minimal perturbation is searched without a bound]")
@click.option("--norm", default=None, metavar="inf|2|1",
              help="Threat model: L-inf, L2 or L1 (FMN)  [default: inf; deepfool, fmn, cw: 2]")
@click.option("--per-image", is_flag=True, help="Minimum-norm attacks: print every image's minimal perturbation "
                                                "(default: the first 10; all are in the JSON).")
@click.option("--steps", type=count(None), default=None, help="PGD, APGD: gradient steps  [default: 40; APGD 100]")
@click.option("--queries", type=count(None), default=None, help="Square: model queries per image  [default: 5000]")
@click.option("--step-size", type=Number(), default=None, help="PGD: step size  [default: 2.5 * eps / steps]")
@click.option("--restarts", type=count(None), default=None,
              help="PGD: random restarts; the worst case is kept  [default: 1]")
@click.option("--random-start/--no-random-start", default=None, help="PGD: start at a random point of the ball.")
@click.option("--loss", default=None, metavar="ce|margin|dlr",
              help="Loss to ascend: cross-entropy, margin (C&W; PGD) or DLR (APGD).")
@click.option("--targeted", is_flag=True, help="Attack towards --target instead of away from the label.")
@click.option("--target", default=None, metavar="C", help="Target class (index or name); implies --targeted.")
@data_options
@click.option("--batch-size", type=count(1), default=256, show_default=True, help="Images per batch.")
@click.option("--out", type=click.Path(dir_okay=False), default=None, metavar="FILE",
              help="JSON results  [default: attack-NAME-NORM.json beside MODEL]; an existing file is kept "
                   "unless --force")
@click.option("--force", is_flag=True, help="Replace an existing --out file (and its example PNGs).")
@click.option("--save-examples", is_flag=True,
              help="Also write a PNG per eps of clean / perturbation / adversarial examples.")
@click.option("--value-range", "value_range_opt", type=ValueRange(), default=None,
              help="Pixel range LO,HI the model expects, when neither its card nor a leading Rescaling layer says.")
@click.option("--unsafe", is_flag=True, help="Load a .keras file that contains code (Lambda layers).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@fail_under_option
def attack_command(model_ref, attack_name, eps, norm, per_image, steps, queries, step_size, restarts, random_start,
                   loss, targeted, target, dataset, data_path, limit, seed, batch_size, out, force, save_examples,
                   value_range_opt, unsafe, no_progress, fail_under) -> None:
    """Attack MODEL on the test split of its data and print accuracy under attack per eps.

    MODEL is a folder written by `robust train` (which remembers its data) or
    a .keras file (then --dataset is required). Without --limit the whole
    test split is attacked.

    A minimum-norm attack (deepfool, fmn, cw) without --eps searches each
    image's smallest adversarial perturbation and prints those, their median
    and their CDF; with --eps it also gives the accuracy at each eps (from
    one search).

    Example: robust attack runs/lenet5 --attack pgd --eps 0.1,0.3 --steps 40

    Example: robust attack runs/lenet5 --attack fmn --norm 2
    """
    from robust.attacks import get_attack
    from robust.data import DATASETS, load_dataset
    from robust.evaluation import evaluate_attack, format_table
    from robust.data import scale_to
    from robust.models import check_model_input
    from robust.report import figures

    # Everything the user typed is checked before the model and data load.
    minimum_norm, norm, params = _checked_attack(attack_name, eps, norm, seed, target, targeted, save_examples,
                                                 fail_under, dict(steps=steps, queries=queries, step_size=step_size,
                                                                  restarts=restarts, random_start=random_start,
                                                                  loss=loss))
    from robust.artifacts import all_or_nothing, claim, write_json
    from robust.attacks import get_norm

    norm_tag = {"inf": "linf", "2": "l2", "1": "l1"}[get_norm(norm).name]
    out_path = Path(out) if out else _default_out(model_ref, f"attack-{attack_name}-{norm_tag}.json")
    model, card = _load(model_ref, unsafe, value_range_opt)
    value_range = tuple(card["value_range"])
    eps = [] if minimum_norm and eps is None else _eps_in_range(eps, value_range)
    pngs = [out_path.with_name(f"{out_path.stem}-eps{e:g}.png") for e in eps] if save_examples else []
    with claim([out_path, *pngs], force=force, what="--out" if out else "the results file",
               command="robust attack"), all_or_nothing():
        dataset = dataset or card.get("dataset")
        if dataset is None:
            raise RobustError(f"{_no_dataset(model_ref)}, so it does not say what data the model was trained on. "
                              "Pass --dataset mnist, fashion_mnist or cifar10 (and --data PATH for your own files).")
        data_path = data_path or (_card_data_path(card, model_ref) if dataset == card.get("dataset") else None)
        if dataset in DATASETS:  # the shapes are known before any image is read
            check_model_input(model, DATASETS[dataset].image_shape, data_name=f"the {dataset} data")
        data = load_dataset(dataset, data_path, limit=limit, seed=seed)
        check_model_input(model, data.input_shape, data_name=f"the {dataset} data")
        class_names = _class_names(card, dataset) or list(data.class_names)
        target_index = _parse_class(target, class_names, "--target") if target is not None else None

        def save(result):  # staged: lands with the JSON, or not at all
            figures.examples_grid(figures.example_arrays(x_model, result, value_range), class_names, result.eps,
                                  attack_name.upper(), pngs[eps.index(result.eps)])

        model_name = card.get("model", model.name)
        echo_err(f"{attack_name} ({norm}) on {model_name}: {len(data.x_test):,} test images of {data.describe()}")
        x_model = scale_to(data.x_test, value_range)  # [0, 1] images in the model's own range
        results, rows = [], []  # the sweep's results, for each image's robustness radius
        if eps:
            rows = evaluate_attack(model, attack_name, x_model, data.y_test, eps, value_range=value_range,
                                   batch_size=batch_size, seed=seed, target=target_index, progress=not no_progress,
                                   on_result=lambda r: (results.append(r), save_examples and save(r)), **params)
            click.echo(format_table(rows))
        else:  # a minimum-norm search without a bound
            results.append(get_attack(attack_name, eps=None, seed=seed, **params)(
                model, x_model, data.y_test, value_range=value_range, batch_size=batch_size,
                progress=not no_progress))
        warn_constant(results, class_names)
        radius = _minimal(results, class_names, per_image) if minimum_norm else _radius(results, rows)
        write_json(out_path, {
            "command": "attack", "model": str(model_ref), "model_name": model_name, "dataset": dataset,
            "data_source": data.source, "value_range": list(value_range), "n": len(data.x_test),
            "attack": attack_name, "norm": norm, "params": results[0].params, "target": target_index,
            "labels_from": results[0].labels_from, "rows": rows, "radius": radius, "versions": _versions(),
        })
    click.echo(f"wrote {out_path}" + "".join(f"\nwrote {p}" for p in pngs))
    enforce_fail_under(rows, fail_under)


def _checked_attack(attack_name, eps, norm, seed, target, targeted, save_examples, fail_under, options):
    """``(minimum_norm, norm, params)`` of `robust attack`'s options, each checked before any work."""
    from robust.attacks import MinimumNormAttack, attack_registry, get_attack

    minimum_norm = issubclass(attack_registry().get(str(attack_name).strip().lower(), object), MinimumNormAttack)
    norm = norm if norm is not None else ("2" if minimum_norm else "inf")
    params = {k: v for k, v in dict(norm=norm, **options).items() if v is not None}
    if target is not None or targeted:
        params["targeted"] = True
    if eps is not None and not eps:
        raise RobustError("--eps needs at least one number, such as --eps 0.05,0.1,0.3.")
    for e in eps or ([None] if minimum_norm else DEFAULT_EPS_FRACTIONS):
        get_attack(attack_name, eps=e, seed=seed, **params)
    if minimum_norm and eps is None and (save_examples or fail_under is not None):
        raise RobustError(f"{'--save-examples' if save_examples else '--fail-under'} needs --eps with a minimum-norm "
                          f"attack ({attack_name}): examples and accuracies are taken at an eps, such as --eps 1,2.")
    if params.get("targeted") and target is None:
        raise RobustError("--targeted needs --target C: the class (index or name) every image should be pushed to.")
    return minimum_norm, norm, params


#: ``robust attack``'s default eps, as fractions of the model's value range (0-255 pixels: 12.75, 25.5, 76.5).
DEFAULT_EPS_FRACTIONS = (0.05, 0.1, 0.3)


def _eps_in_range(eps: list[float] | None, value_range) -> list[float]:
    """The eps to run in the model's units: the default fractions scaled to its range, or the given ones.

    Given eps are in the model's units, as in ``robust eval``; on a range wider than 1 where every eps
    is below 1, the user most likely meant fractions of [0, 1], so say what they will get.
    """
    lo, hi = value_range
    width = hi - lo
    if eps is None:
        eps = [round(f * width, 6) for f in DEFAULT_EPS_FRACTIONS]
        if width != 1:
            echo_err(f"eps {','.join(f'{e:g}' for e in eps)}: the default "
                     f"{','.join(f'{f:g}' for f in DEFAULT_EPS_FRACTIONS)} of the model's value range "
                     f"[{lo:g}, {hi:g}]")
        return eps
    if width >= 2 and max(eps) < 1:
        echo_err(f"warning: --eps {','.join(f'{e:g}' for e in eps)} is in the model's units: its inputs are in "
                 f"[{lo:g}, {hi:g}], so eps {max(eps):g} moves a pixel by {max(eps):g} of {width:g} "
                 f"({100 * max(eps) / width:.2g}% of the range). For fractions of the range pass --eps "
                 f"{','.join(f'{e * width:g}' for e in eps)}.")
    return list(eps)


def warn_constant(results, class_names) -> None:
    """Warn when the model gives every clean image the same class: its accuracies say nothing about robustness."""
    if not results:
        return
    predicted = np.asarray(results[0].clean_pred)
    classes, counts = np.unique(predicted, return_counts=True)
    if len(predicted) >= 10 and counts.max() >= 0.99 * len(predicted):
        name = class_names[int(classes[counts.argmax()])] if class_names else str(int(classes[counts.argmax()]))
        echo_err(f"warning: the model predicts class {name!r} for {counts.max():,} of {len(predicted):,} clean "
                 "images: a constant classifier. Its accuracy under attack measures the share of that class, "
                 "not robustness; check the model and its value range.")


def _minimal(results, class_names, every: bool) -> dict:
    """Print each image's minimal perturbation (the first 10 unless ``every``), their median and CDF.

    ``results`` are a minimum-norm attack's, unbounded or one per eps of a sweep (one search: an image
    a smaller eps broke is not attacked at the next, so its radius comes from the smaller one).
    """
    from robust.attacks import get_norm
    from robust.evaluation import minimal_radius_summary

    ordered = sorted(results, key=lambda r: -1.0 if r.eps is None else r.eps)
    radius = np.fmin.reduce([r.radius for r in ordered]) if len(ordered) > 1 else ordered[0].radius
    label, n = get_norm(ordered[0].norm).label, len(radius)
    summary = minimal_radius_summary(radius)
    shown = n if every else min(10, n)
    name = (lambda c: class_names[int(c)] if class_names else str(int(c)))  # noqa: E731
    click.echo(f"minimal {label} perturbation per image"
               + ("" if shown == n else f" (the first {shown} of {n:,}; all are in the JSON; --per-image prints "
                                        "every one)") + ":")
    click.echo(f"{'image':>7}  {'label':>12}  {'adversarial':>12}  {'minimal ' + label:>13}")
    for i in range(shown):
        r = radius[i]
        broken = [res for res in ordered if res.attacked[i] and res.success[i]]
        adv = (name(broken[0].adv_pred[i]) if broken else f"> eps {ordered[-1].eps:g}") if np.isfinite(r) else "-"
        size = "not attacked" if np.isnan(r) else ("not found" if np.isinf(r) else f"{r:.4f}")
        click.echo(f"{i:>7}  {name(ordered[0].labels[i]):>12}  {adv:>12}  {size:>13}")
    fmt = lambda v: "beyond the search (never broken)" if v is None else f"{v:.4g}"  # noqa: E731
    q1, median, q3 = summary["quartiles"]
    click.echo(f"median minimal {label}: {fmt(median)} over {summary['n']:,} images (quartiles {fmt(q1)}, "
               f"{fmt(q3)}; clean mistakes count 0; {100 * summary['never_broken']:.1f}% never broken)")
    click.echo("radius CDF, share of the images broken within each radius:")
    click.echo("  " + "  ".join(f"{r:.3g}: {100 * share:.0f}%" for r, share in summary["cdf"]))
    return summary


def _radius(results, rows) -> dict:
    """Each image's smallest breaking eps on the grid (null: none broke it) and the median; printed too."""
    from robust.evaluation import radius_summary, smallest_breaking_eps

    per_image = smallest_breaking_eps(results)
    summary = radius_summary(rows)
    median = summary["median"]
    text = f"beyond {max(r['eps'] for r in rows):g}" if median is None else f"{median:g}"
    click.echo(f"median robustness radius: {text} ({100 * summary['beyond']:.1f}% of the images survive every eps)")
    return {**summary, "per_image": [None if np.isinf(r) else float(r) for r in per_image]}


@main.command("attacks")
def attacks_command() -> None:
    """List the available attacks and their parameters (built-ins and plugins)."""
    from robust.attacks import FoolingImages, attack_registry, attack_source

    def show(name, cls, source, usage):
        click.echo(f"{name:<8} {cls.__name__}: {(inspect.getdoc(cls) or '').splitlines()[0]}")
        params = [(p.name, p.default) for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"]
        click.echo(f"{'':<8} parameters: " + ", ".join(
            f"{k}={'(required)' if v is inspect.Parameter.empty else repr(v)}" for k, v in params))
        click.echo(f"{'':<8} from: {source}; {usage}")

    for name, cls in sorted(attack_registry().items()):
        show(name, cls, attack_source(name), f"robust attack MODEL --attack {name}")
    show("fool", FoolingImages, "built-in", "robust fool MODEL")


@main.command("fool")
@click.argument("model_ref", metavar="MODEL")
@click.option("--classes", default="all", show_default=True, metavar="all|C,C",
              help="Classes to grow fooling images for (indices or names).")
@click.option("--seeds", type=count(1), default=4, show_default=True,
              help="Images per class, each from its own noise.")
@click.option("--threshold", type=Number(), default=0.99, show_default=True, help="Confidence to reach.")
@click.option("--max-steps", type=count(None), default=1000, show_default=True, help="Most gradient steps per image.")
@click.option("--step-size", type=Number(), default=None,
              help="Pixel change per step  [default: 1% of the value range]")
@click.option("--l2-decay", type=Number(), default=0.0, show_default=True,
              help="Shrink towards the range's low end per step (Yosinski et al. 2015).")
@click.option("--blur-every", type=count(None), default=0, show_default=True,
              help="Gaussian blur every N steps (0: off).")
@click.option("--jitter", type=count(None), default=0, show_default=True,
              help="Random shift of up to N pixels per step.")
@seed_option()
@click.option("--dataset", default=None, metavar="NAME", help="Names the classes of a .keras file without a card.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Folder for the PNG gallery and fooling.json  [default: fooling/ beside MODEL]")
@click.option("--value-range", "value_range_opt", type=ValueRange(), default=None,
              help="Pixel range LO,HI the model expects, when neither its card nor a leading Rescaling layer says.")
@click.option("--unsafe", is_flag=True, help="Load a .keras file that contains code (Lambda layers).")
def fool_command(model_ref, classes, seeds, threshold, max_steps, step_size, l2_decay, blur_every, jitter, seed,
                 dataset, out_dir, value_range_opt, unsafe) -> None:
    """Grow images MODEL classifies with high confidence from noise (Nguyen et al. 2015).

    Writes one PNG per class (the images titled with the model's confidence)
    and fooling.json.

    Example: robust fool runs/lenet5 --classes 3,7 --seeds 4
    """
    from robust.artifacts import check_writable, write_json
    from robust.attacks import FoolingImages
    from robust.report import figures

    attack = FoolingImages(threshold=threshold, max_steps=max_steps, step_size=step_size, l2_decay=l2_decay,
                           blur_every=blur_every, jitter=jitter, seed=seed)
    if dataset is not None:
        from robust.data import DATASETS

        if dataset not in DATASETS:
            raise RobustError(f"Unknown dataset {dataset!r}. Known datasets: {known_names(DATASETS)}.")
    out = Path(out_dir) if out_dir else _default_out(model_ref, "fooling")
    check_writable(out, what="--out" if out_dir else "the output folder")
    model, card = _load(model_ref, unsafe, value_range_opt)
    value_range = tuple(card.get("value_range") or (0.0, 1.0))
    num_classes = int(model.output_shape[-1]) if getattr(model, "output_shape", None) else None
    class_names = _class_names(card, dataset or card.get("dataset"), num_classes)
    chosen = None if classes.strip().lower() == "all" else _parse_classes(classes, class_names)
    result = attack(model, chosen, seeds, value_range=value_range)

    click.echo(f"{'class':<14} {'reached':>8} {'min conf':>9} {'mean steps':>11}")
    written = []
    for c in dict.fromkeys(result.target.tolist()):
        pick = result.target == c
        name = class_names[c] if class_names and c < len(class_names) else str(c)
        click.echo(f"{name:<14} {int(result.reached[pick].sum()):>4}/{int(pick.sum()):<3} "
                   f"{100 * result.confidence[pick].min():>8.2f}% {result.steps[pick].mean():>11.1f}")
        path = out / f"fool-{c}.png"
        figures.fooling_gallery(figures.fooling_arrays(result, value_range, np.flatnonzero(pick)), class_names,
                                threshold, path)
        written.append(path)
    write_json(out / "fooling.json", {
        "command": "fool", "model": str(model_ref), "params": attack.params, "value_range": list(value_range),
        "seconds": result.seconds,
        "images": [{"target": int(t), "class_name": class_names[t] if class_names else str(t), "confidence": float(p),
                    "predicted": int(q), "steps": int(s), "reached": bool(r), "png": f"fool-{t}.png"}
                   for t, p, q, s, r in zip(result.target, result.confidence, result.predicted, result.steps,
                                            result.reached)],
        "versions": _versions(),
    })
    click.echo(f"reached {threshold:.0%} confidence for {int(result.reached.sum())}/{len(result.target)} images "
               f"in {result.seconds:.1f} s; wrote {out}/ (fooling.json and {len(written)} PNG files)")
