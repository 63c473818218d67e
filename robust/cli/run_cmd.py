"""``robust run`` (the end-to-end study) and ``robust report`` (re-render without recomputing)."""

from __future__ import annotations

from pathlib import Path

import click

from robust.cli import main
from robust.cli.common import (
    check_fits,
    check_resume,
    echo_result,
    quiet_option,
    ray_options,
    study_echo,
    study_mapper,
)


@main.command("run")
@click.argument("spec", required=False, metavar="[SPEC]")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder [default: reports/<spec name>/].")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in --out, keeping finished work.")
@click.option("--force", is_flag=True, help="Start over in a folder that already holds a run "
                                            "(trained models with the same settings are still reused).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@quiet_option
@ray_options
def run_command(spec, out_dir, resume, force, no_progress, quiet, ray_address, shard_size) -> None:
    """Train, attack and report: CNNs vs fully connected baselines.

    SPEC is a run spec in TOML or a built-in spec name (mnist, cifar10);
    without it the built-in MNIST study runs: LeNet-5 vs an MLP vs an MLP
    matched to LeNet-5's size, FGSM and PGD at six eps, fooling images.
    """
    from robust.artifacts import check_writable
    from robust.errors import RobustError
    from robust.plugins import reuse
    from robust.spec import load_spec
    from robust.study import Study

    if resume and force:
        raise RobustError("--resume and --force contradict each other: --resume keeps finished work, "
                          "--force throws it away. Pass one of them.")
    engine = study_mapper(ray_address, shard_size)  # Ray missing is said before anything is loaded
    parsed = load_spec(spec)
    if parsed.ray_shared and ray_address is not None:
        engine.use_shared(parsed.ray_shared)  # checked before anything is written; ignored without --ray
    out = out_dir or Path("reports") / parsed.name
    check_resume(out, resume)
    check_writable(out, what="--out" if out_dir else "the run folder")
    ready = _ready_models(parsed)
    say = study_echo(quiet)
    say(f"Study {parsed.name!r} ({parsed.source}) -> {out}")
    with reuse(*ready), engine as mapper:  # ready models loaded and checked once, before anything trains
        results = Study(parsed, out, progress=not (no_progress or quiet), echo=say, mapper=mapper).run(
            resume=resume, force=force)
    if quiet:
        echo_result(results, out)


def _ready_models(spec) -> list:
    """Load the spec's ready models (ref) and check each takes the dataset's images, before any model trains."""
    from robust.errors import RobustError
    from robust.plugins import load_model_ref

    loaded = []
    for i, entry in enumerate(spec.models):
        if entry.ref:
            try:
                model = load_model_ref(entry.ref, value_range=entry.value_range, unsafe=entry.unsafe)
                check_fits(model, spec.dataset)
            except RobustError as exc:
                raise RobustError(f"Spec {spec.source}: models[{i}] (ref {entry.ref!r}): {exc}") from None
            loaded.append(model)
    return loaded


@main.command("report")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
def report_command(run_dir) -> None:
    """Re-render RUN_DIR's report from its results.json, without recomputing anything."""
    from robust.artifacts import check_writable
    from robust.report import load_results, render_report

    load_results(run_dir)  # a missing or malformed results.json is named before anything else
    check_writable(run_dir / "figures", what="the figures folder")
    paths = render_report(run_dir)
    click.echo(f"Wrote {paths['html']} and {paths['md']}")
