"""``robust eval MODEL_REF``: the study of ``robust run`` on a ready model we did not write.

The command loads and checks the model (:func:`robust.plugins.load_model_ref`),
writes the equivalent run spec (one ``[[models]] ref = ...`` entry) and runs
it with :class:`robust.study.Study`, so ``robust eval`` and a spec naming the
same model give the same folder, numbers and report.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from robust.cli import main
from robust.cli.common import (
    FloatList,
    check_fits,
    check_resume,
    count,
    data_options,
    echo_result,
    enforce_fail_under,
    fail_under_option,
    quiet_option,
    ray_options,
    study_echo,
    study_mapper,
)
from robust.cli.common import ValueRange  # noqa: F401  (shared with attack and fool)
from robust.errors import RobustError

#: The default eps grid, as fractions of the model's value range (the run spec's default grid on [0, 1]).
DEFAULT_EPS_FRACTIONS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3)


@main.command("eval")
@click.argument("model_ref", metavar="MODEL_REF")
@data_options
@click.option("--attacks", "attacks", default="fgsm,pgd,auto", show_default=True, metavar="A,B",
              help="Comma-separated registered attacks (`robust attacks` lists built-ins and plugins); "
                   "`auto`, the worst-case ensemble, gives the headline robust accuracy.")
@click.option("--eps", "eps", type=FloatList(), default=None,
              help="Comma-separated eps in the model's value range, e.g. 0,8,16 for 0-255 pixels "
                   "[default: 0, 5, 10, 15, 20 and 30% of the range].")
@click.option("--steps", type=count(1), default=None,
              help="Iterations of the attacks that take steps (PGD).")
@click.option("--value-range", "value_range", type=ValueRange(), default=None,
              help="Pixel range the model expects, when its metadata does not say (otherwise a leading "
                   "Rescaling layer decides, else [0, 1] is assumed).")
@click.option("--unsafe", is_flag=True, help="Load a .keras file that carries code (a Lambda layer). "
                                             "Only for files you trust: loading runs that code.")
@click.option("--no-fooling", is_flag=True, help="Skip the fooling images.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: reports/eval-<model name>/].")
@click.option("--resume", is_flag=True, help="Continue an interrupted evaluation in --out, keeping finished work.")
@click.option("--force", is_flag=True, help="Start over in a folder that already holds a run.")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@quiet_option
@fail_under_option
@ray_options
def eval_command(model_ref, dataset, data_path, limit, seed, attacks, eps, steps, value_range, unsafe, no_fooling,
                 out_dir, resume, force, no_progress, quiet, fail_under, ray_address, shard_size) -> None:
    """Attack and report on a ready model: a .keras file, a `robust train` folder,
    module.path:factory, or a model registered by a plugin.

    Eps is in the model's value range: for a model taking 0-255 pixels,
    --eps 8 moves each pixel by 8 of 255. The report says which range was
    used and where it came from.
    """
    from robust.artifacts import check_writable
    from robust.data import DATASETS
    from robust.plugins import load_model_ref, reuse
    from robust.spec import parse_spec
    from robust.study import Study

    if resume and force:
        raise RobustError("--resume and --force contradict each other: --resume keeps finished work, "
                          "--force throws it away. Pass one of them.")
    attack_names = _attack_names(attacks, steps)
    engine = study_mapper(ray_address, shard_size)
    if dataset is not None and dataset not in DATASETS:
        raise RobustError(f"Unknown dataset {dataset!r}. Known datasets: {', '.join(DATASETS)}.")
    if data_path is not None and not Path(data_path).exists():
        raise RobustError(f"--data {data_path}: no such file or folder. Expected a .npz file or a data folder.")
    if out_dir is not None:
        check_resume(out_dir, resume)
        check_writable(out_dir, what="--out")
    loaded = load_model_ref(model_ref, value_range=value_range, unsafe=unsafe)
    dataset = dataset or loaded.dataset
    if dataset is None:
        raise RobustError(f"Which data should {loaded.name!r} be evaluated on? Its metadata names no dataset; "
                          f"pass --dataset ({', '.join(DATASETS)}).")
    if dataset not in DATASETS:
        raise RobustError(f"Unknown dataset {dataset!r}" + (" (from the model's metadata)" if dataset == loaded.dataset
                                                             else "") + f". Known datasets: {', '.join(DATASETS)}.")
    check_fits(loaded, dataset)

    lo, hi = loaded.value_range
    eps_values = list(eps) if eps else [round(f * (hi - lo), 6) for f in DEFAULT_EPS_FRACTIONS]
    spec = parse_spec(_spec_toml(loaded, dataset=dataset, data_path=data_path, limit=limit, seed=seed,
                                 attack_names=attack_names, eps=eps_values, steps=steps, fooling=not no_fooling,
                                 explicit_range=not loaded.value_range_assumed),
                      source=f"robust eval {model_ref}")
    out = out_dir or Path("reports") / spec.name
    if out_dir is None:
        check_resume(out, resume)
        check_writable(out, what="the run folder")
    say = study_echo(quiet)
    say(f"Evaluating {loaded.name} on {dataset} -> {out}")
    with reuse(loaded), engine as mapper:  # the study loads the model by reference: reuse this one
        results = Study(spec, out, progress=not (no_progress or quiet), echo=say, mapper=mapper).run(
            resume=resume, force=force)
    if quiet:
        echo_result(results, out)
    enforce_fail_under(results["records"], fail_under)


def _attack_names(text: str, steps: int | None) -> list[str]:
    """``--attacks fgsm,pgd``: registered attacks, each named once, checked before any model is loaded."""
    from robust.attacks import attack_registry, get_attack

    items = [a.strip().lower() for a in text.split(",")]
    if not any(items) or any(not a for a in items):
        raise RobustError(f"--attacks expects registered attacks separated by single commas, such as fgsm,pgd; "
                          f"received {text!r}.")
    for name in items:
        get_attack(name, eps=0.0)  # an unknown name is named, with the known ones
    if len(set(items)) != len(items):
        raise RobustError(f"--attacks names an attack twice; received {text!r}.")
    registry = attack_registry()
    if steps is not None and not any("steps" in registry[a].parameters() for a in items):
        raise RobustError(f"--steps applies to attacks that iterate (such as pgd); none of {', '.join(items)} "
                          "takes steps.")
    return items


def _spec_toml(loaded, *, dataset, data_path, limit, seed, attack_names, eps, steps, fooling, explicit_range) -> str:
    """The run spec equivalent to the command line, as TOML (validated by robust.spec.parse_spec)."""
    from robust.attacks import attack_registry

    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", loaded.name).strip("-.") or "model"
    model = {"ref": loaded.ref, "label": loaded.name}
    if explicit_range:
        model["value_range"] = list(loaded.value_range)
    if loaded.unsafe:
        model["unsafe"] = True
    data = {"dataset": dataset}
    if data_path:
        data["path"] = str(data_path)
    if limit:
        data.update(train_limit=int(limit), test_limit=int(limit))
    registry = attack_registry()
    attack_tables = []
    for name in attack_names:
        table = {"name": name}
        if steps is not None and name in registry and "steps" in registry[name].parameters():
            table["steps"] = int(steps)
        attack_tables.append(table)
    lines = [f"name = {_toml(f'eval-{slug}')}", f"title = {_toml(f'robust eval: {loaded.name} on {dataset}')}",
             f"seed = {int(seed)}", "", "[data]", *(f"{k} = {_toml(v)}" for k, v in data.items()), "",
             "[eps]", f"values = {_toml([float(e) for e in eps])}", "", "[fooling]", f"enabled = {_toml(fooling)}", ""]
    lines += ["[[models]]", *(f"{k} = {_toml(v)}" for k, v in model.items()), ""]
    for table in attack_tables:
        lines += ["[[attacks]]", *(f"{k} = {_toml(v)}" for k, v in table.items()), ""]
    return "\n".join(lines)


def _toml(value) -> str:
    """A TOML literal for a string, number, bool or list of them."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    escaped = "".join("\\" + ch if ch in '"\\' else f"\\u{ord(ch):04x}" if ord(ch) < 0x20 or ord(ch) == 0x7F
                      else ch for ch in str(value))
    return f'"{escaped}"'
