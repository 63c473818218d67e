"""The report's headline (robust accuracy), robustness radius and masking section, from ``results.json`` alone.

Robust accuracy is the accuracy under the ``auto`` ensemble (Croce & Hein 2020:
APGD-CE, APGD-T, Square, the worst case per image). A spec without it gets the
worst case over its attacks at each eps instead, named as an upper bound. A model
with a failing check carries the flag next to its number: a masked model is never
shown as robust.
"""

from __future__ import annotations

from robust.evaluation import radius_summary

ENSEMBLE = "auto"


def headline_key(results: dict) -> str | None:
    """The attack key of the study's ``auto`` ensemble (its first L-inf entry, else its first), or None."""
    keys = list(dict.fromkeys(r["attack_key"] for r in results["records"] if r.get("attack") == ENSEMBLE))
    return next((k for k in keys if "-l2" not in k), keys[0] if keys else None)


def _flag(model: dict) -> dict:
    failed = [c["check"] for c in model["checks"] if c["status"] == "fail"]
    warned = [c["check"] for c in model["checks"] if c["status"] == "warn"]
    return {"status": "fail" if failed else ("warn" if warned else "pass"), "failed": failed, "warned": warned}


def _minimal(records: list, norm: str | None) -> dict | None:
    """A minimum-norm attack's radius distribution in the headline's norm, where the spec ran one (its
    record of the smallest eps: every record of it holds the same search), else None."""
    found = sorted((r for r in records if r.get("minimal_radius") and r.get("norm") == norm), key=lambda r: r["eps"])
    return {"attack": found[0]["attack_key"], **found[0]["minimal_radius"]} if found else None


def headline(results: dict) -> dict:
    """Per model and eps: robust accuracy beside each single attack's accuracy, the radius, the flag.

    Returns:
        ``{"attack": key or None, "exact": bool, "eps": [...], "models": {key: {"label", "clean",
        "robust": {eps: accuracy}, "others": {eps: [[attack_key, accuracy], ...]}, "radius":
        radius_summary, "flag"}}}``; ``exact`` is False when the spec has no ensemble and the
        number is the worst case over its attacks (an upper bound on robust accuracy).
    """
    key = headline_key(results)
    records = results["records"]
    eps = sorted({r["eps"] for r in records if r["eps"] > 0})
    models = {}
    for mk, m in results["models"].items():
        mine = [r for r in records if r["model"] == mk]
        if key is not None:
            rows = [r for r in mine if r["attack_key"] == key]
        else:  # the per-eps worst case over the attacks run
            rows = [min((r for r in mine if r["eps"] == e), key=lambda r: r["adversarial_accuracy"])
                    for e in sorted({r["eps"] for r in mine})]
        others = {e: [[r["attack_key"], r["adversarial_accuracy"]] for r in mine
                      if r["eps"] == e and r["attack_key"] != key] for e in eps}
        models[mk] = {"label": m["label"], "clean": m.get("subset_clean_accuracy", m["test_accuracy"]),
                      "robust": {r["eps"]: r["adversarial_accuracy"] for r in rows if r["eps"] > 0},
                      "others": others, "radius": radius_summary(rows), "flag": _flag(m),
                      "minimal": _minimal(mine, rows[0]["norm"] if rows else None)}
    params = next((r.get("params", {}) for r in records if key is not None and r["attack_key"] == key), {})
    budget = (f"APGD {params['steps']} steps, APGD-T {params['n_target_classes']} target classes, Square "
              f"{params['queries']} queries" if {"steps", "n_target_classes", "queries"} <= set(params) else "")
    return {"attack": key, "exact": key is not None, "eps": eps, "models": models, "budget": budget}


def headline_findings(head: dict) -> list[str]:
    """Sentences for the findings: robust accuracy per model at the middle eps, and how much PGD overrated it."""
    if not head["eps"] or not head["models"]:
        return []
    e = head["eps"][len(head["eps"]) // 2] if len(head["eps"]) > 1 else head["eps"][0]
    what = ("robust accuracy (the worst case of APGD-CE, APGD-T and Square per image)" if head["exact"]
            else "the worst case over this study's attacks (no auto ensemble: an upper bound on robust accuracy)")
    parts = []
    for m in head["models"].values():
        acc = m["robust"].get(e)
        if acc is None:
            continue
        text = f"{m['label']} {100 * acc:.1f}%"
        if m["flag"]["status"] == "fail":
            text += " (flagged: fails " + "; ".join(m["flag"]["failed"]) + ")"
        gaps = [(a - acc, k) for k, a in m["others"].get(e, [])]
        if head["exact"] and gaps:
            gap, k = max(gaps)
            if gap > 0.005:
                text += f", {gap * 100:.1f} points below {k.upper()}"
        parts.append(text)
    return [f"At eps={e:g}, {what}: " + "; ".join(parts) + "."] if parts else []


def masking(results: dict) -> dict:
    """The masking section: the transfer matrix (rows: source, columns: target) and each model's masking checks."""
    names = ("Square does not beat", "finds little more than", "white-box attack at least as strong")
    checks = {k: [c for c in m["checks"] if any(n in c["check"] for n in names)] for k, m in results["models"].items()}
    transfer = results.get("transfer")
    return {"transfer": transfer, "checks": checks, "order": list(results["models"])}


def headline_lines(results: dict) -> list[str]:
    """The headline as lines for a terminal (``robust eval``, ``robust run``): robust accuracy per model and eps."""
    head = headline(results)
    what = (f"Robust accuracy ({head['attack']}: worst case of APGD-CE, APGD-T, Square)" if head["exact"]
            else "Robust accuracy: no auto ensemble in this run; worst case over its attacks (an upper bound)")
    lines = [what + ":"]
    for m in head["models"].values():
        accs = ", ".join(f"eps={e:g} {100 * m['robust'][e]:.1f}%" for e in head["eps"] if e in m["robust"])
        median = m["radius"]["median"]
        radius = f"> {head['eps'][-1]:g}" if median is None and head["eps"] else f"{median:g}" if median else "0"
        flag = {"fail": "  FLAGGED (fails: " + "; ".join(m["flag"]["failed"]) + ")",
                "warn": "  warn: " + "; ".join(m["flag"]["warned"]), "pass": ""}[m["flag"]["status"]]
        minimal = m.get("minimal")
        if minimal:
            radius += (f" (grid), {'beyond the search' if minimal['median'] is None else format(minimal['median'], '.3g')}"
                       f" ({minimal['attack']}, each image's minimal perturbation)")
        lines.append(f"  {m['label']}: {accs}; median robustness radius {radius}{flag}")
    return lines
