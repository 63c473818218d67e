"""Render a run folder's ``results.json`` into figures, ``report.html`` and ``report.md``.

Rendering reads only ``results.json`` and the arrays it names: ``robust report
DIR`` re-renders without recomputing anything. The HTML is one self-contained
file (images embedded as data URIs); every string that comes from a model, a
plugin or a spec (names, labels, class names) is escaped by Jinja's autoescape.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np

from robust.artifacts import all_or_nothing, pending, write_text
from robust.report import figures, robustness
from robust.report.findings import findings
from robust.report.results import RESULTS_SCHEMA, load_arrays, load_results

__all__ = ["RESULTS_SCHEMA", "load_results", "render_report"]


def _escape_markdown(value):
    """Make a string from a model or plugin inert in Markdown: no raw HTML, no broken table cells."""
    if not isinstance(value, str):
        return value
    return (value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def _receptive_field_text(rf) -> str:
    """A summary row's receptive field (a dict, missing in older results) in words."""
    if not rf:
        return "–"
    if not rf.get("spatial", True):
        return "whole image"
    (h, w), (jh, jw) = rf["size"], rf["jump"]
    return f"{h}x{w} px, step {jh}" if jh == jw else f"{h}x{w} px, step {jh}x{jw}"


def training_text(model: dict) -> str:
    """How a model of ``results.json`` was trained: ``standard`` or its threat model (``PGD-10, L-inf eps 0.3``)."""
    adv = model.get("adversarial")
    if not adv:
        return "standard" if not model.get("ref") else "ready model"
    steps = f"-{adv['steps']}" if adv["method"] != "fgsm-rs" else ""
    beta = f", beta {adv['beta']:g}" if adv.get("beta") is not None else ""
    norm = "L-inf" if adv["norm"] == "inf" else f"L{adv['norm']}"
    return f"adversarial: {adv['method'].upper()}{steps}, {norm} eps {adv['eps']:g}{beta}"


def _jinja(markdown: bool = False):
    """The HTML environment autoescapes; the Markdown one escapes every printed string for Markdown."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("robust.report", "templates"),
        autoescape=False if markdown else jinja2.select_autoescape(enabled_extensions=("html", "j2"),
                                                                   default_for_string=True),
        finalize=_escape_markdown if markdown else None,
        undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * float(v):.1f}%"
    env.filters["num"] = lambda v: f"{int(v):,}"
    env.filters["mb"] = lambda v: f"{float(v) / 2**20:.2f} MiB"
    env.filters["rf"] = _receptive_field_text
    env.filters["training"] = training_text
    return env


def render_report(out: str | Path) -> dict:
    """Draw the figures and write ``report.html`` and ``report.md`` into ``out``; return their paths.

    ``results.json`` and every arrays file are checked against their schema
    before anything is drawn, and all files are rendered into temporary files
    that replace the old ones only when every one succeeded: a failure leaves
    the previous figures and report as they were, still matching each other.
    """
    out = Path(out)
    results = load_results(out)
    class_names = results["run"]["data"]["class_names"]
    arrays = {key: load_arrays(out, key, info, len(class_names)) for key, info in results["models"].items()}
    with all_or_nothing():
        context = _draw(results, arrays, out / "figures")

        def data_uri(name):
            return "data:image/png;base64," + base64.b64encode(pending(out / "figures" / name).read_bytes()).decode()

        html = _jinja().get_template("report.html.j2").render(**context, src=data_uri)
        md = _jinja(markdown=True).get_template("report.md.j2").render(**context, src=lambda name: f"figures/{name}")
        write_text(out / "report.html", html)
        write_text(out / "report.md", md)
    return {"html": out / "report.html", "md": out / "report.md"}


def _draw(results: dict, arrays: dict, fig_dir: Path) -> dict:
    """Every figure of the report (written through the staged writer) and the template context."""
    class_names = results["run"]["data"]["class_names"]
    spec = results["spec"]
    attack_keys = list(dict.fromkeys(r["attack_key"] for r in results["records"]))
    curves = {a: figures.accuracy_curves(results, a, fig_dir / f"accuracy_{a}.png") for a in attack_keys}
    from robust.attacks import strongest as strongest_attack

    strongest = spec["attacks"][strongest_attack([a["name"] for a in spec["attacks"]])]
    per_model, learned = {}, {}
    for key, info in results["models"].items():
        a = arrays[key]
        per_model[key] = {
            "examples": figures.examples_grid(a, class_names, spec["report"]["example_eps"],
                                              strongest["name"].upper(), fig_dir / f"examples_{key}.png"),
            "fooling": figures.fooling_gallery(a, class_names, spec["fooling"]["threshold"],
                                               fig_dir / f"fooling_{key}.png"),
            "saliency": figures.saliency_grid(a, class_names, fig_dir / f"saliency_{key}.png"),
            "filters": figures.filter_grid(a, info["kind"], fig_dir / f"filters_{key}.png"),
            "learned": figures.learned_figures(a, key, fig_dir),
        }
        learned[key] = _locality(a)
    head = robustness.headline(results)
    return {"r": results, "curves": curves, "figs": per_model, "table": _results_table(results),
            "findings": robustness.headline_findings(head) + findings(results, learned), "attack_keys": attack_keys,
            "learned": learned, "head": head, "masking": robustness.masking(results),
            "radius_png": figures.radius_cdf(results, head, fig_dir / "radius_cdf.png")}


def _locality(arrays) -> dict | None:
    """The first layer's locality numbers saved by the study (None for runs made before they were)."""
    if "learned_locality" not in arrays.files or arrays["learned_locality"].size == 0:
        return None
    fractions = np.asarray(arrays["learned_locality"], np.float64)
    window = int(arrays["learned_locality_window"])
    pixels = int(np.prod(arrays["example_x"].shape[1:3])) if "example_x" in arrays.files else None
    return {"layer": str(arrays["learned_locality_layer"]), "window": window, "units": int(fractions.size),
            "median": float(np.median(fractions)), "min": float(fractions.min()), "max": float(fractions.max()),
            "even": (window * window / pixels) if pixels else None}


def _results_table(results: dict) -> list[dict]:
    rows = []
    for r in results["records"]:
        rows.append({**r, "label": results["models"][r["model"]]["label"]})
    return rows
