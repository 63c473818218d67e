"""Gradient-masking checks: what they measure on a model, and their verdicts from a study's records.

Carlini et al. 2019 ("On evaluating adversarial robustness") and Athalye et
al. 2018 list them: an iterative attack weaker than a one-step attack,
accuracy that rises with eps, an unbounded attack that cannot reach chance,
and vanishing gradients all mean the attack failed, not that the model is
robust. :func:`gradient_checks` measures (it runs attacks);
:func:`sanity_checks` judges (pure, from numbers already measured).
"""

from __future__ import annotations

import numpy as np


def gradient_checks(model, x: np.ndarray, y: np.ndarray, *, value_range=(0.0, 1.0), seed: int = 0,
                    attack_params: dict | None = None, n_full: int = 200, check_eps: float | None = None) -> dict:
    """Measure what the masking checks need beyond the attack results.

    Returns the fraction of images whose input gradient is exactly zero, and
    the accuracy under a PGD-10 attack whose eps spans the whole value range
    (any image is reachable, so a working attack must reach chance or below).
    """
    from robust.attacks import get_attack
    from robust.gradients import input_gradient

    lo, hi = (float(v) for v in value_range)
    grads = input_gradient(model, x, y, value_range=(lo, hi))
    zero = np.all(grads.reshape(len(x), -1) == 0, axis=1)
    params = {k: v for k, v in (attack_params or {}).items() if k in ("norm", "loss")}
    if params.get("norm", "inf") != "inf":
        params["norm"] = "inf"  # the whole-range ball is an L-inf ball
    n_full = min(len(x), n_full)
    attack = get_attack("pgd", eps=hi - lo, steps=10, seed=seed, **params)
    res = attack(model, x[:n_full], y[:n_full], value_range=(lo, hi))
    classes, counts = np.unique(res.clean_pred, return_counts=True)
    return {
        "majority": {"class": int(classes[counts.argmax()]), "share": float(counts.max() / n_full), "n": n_full},
        "logits_kind": res.logits_kind,
        "more_steps": more_steps(model, x, y, value_range=(lo, hi), seed=seed, eps=check_eps,
                                 attack_params=attack_params) if check_eps else None,
        "zero_gradient_fraction": float(zero.mean()),
        "n_gradient": int(len(x)),
        "full_range": {"eps": hi - lo, "attack": "pgd", "steps": 10, "n": n_full,
                       "adversarial_accuracy": float(np.mean(res.adv_pred == y[:n_full]))},
    }


def more_steps(model, x: np.ndarray, y: np.ndarray, *, value_range, seed: int, eps: float,
               attack_params: dict | None = None, n: int = 200, steps: tuple[int, int] = (40, 100)) -> dict:
    """Accuracy under PGD with ``steps[0]`` and ``steps[1]`` iterations at ``eps`` on the first ``n`` images.

    The PGD keeps the spec's norm, loss and random start; its step size is the default
    ``2.5 * eps / steps``, so both runs can cover the same distance.
    """
    from robust.attacks import get_attack

    params = {k: v for k, v in (attack_params or {}).items() if k in ("norm", "loss", "random_start")}
    n = min(len(x), n)
    accs = [get_attack("pgd", eps=eps, steps=k, seed=seed, **params)(model, x[:n], y[:n], value_range=value_range,
                                                                         progress=False).adversarial_accuracy
            for k in steps]
    return {"eps": float(eps), "n": n, "steps": list(steps), "accuracy": accs, "params": params}


def _status(ok: bool, warn: bool) -> str:
    return "pass" if ok else ("warn" if warn else "fail")


def sanity_checks(records: list[dict], raw: dict, num_classes: int) -> list[dict]:
    """The classic gradient-masking checks of one model, each pass / warn / fail with its numbers.

    Carlini et al. 2019 ("On evaluating adversarial robustness") and Athalye et
    al. 2018 list them: an iterative attack weaker than a one-step attack,
    accuracy that rises with eps, an unbounded attack that cannot reach chance,
    and vanishing gradients all mean the attack failed, not that the model is robust.
    """
    out = []
    n = max((r["n"] for r in records), default=1)
    tol = max(0.01, 1.0 / n)
    by = {}
    for r in records:
        by.setdefault(r["attack_key"], {})[r["eps"]] = r["adversarial_accuracy"]

    fgsm = [k for k in by if k.startswith("fgsm")]
    pgd = [k for k in by if k.startswith("pgd")]
    if fgsm and pgd:
        worst = max((by[p][e] - by[f][e], e, p, f) for p in pgd for f in fgsm for e in by[p] if e in by[f])
        gap, eps, p, f = worst
        out.append({"check": "PGD at least as strong as FGSM at every eps",
                    "status": _status(gap <= tol, gap <= 3 * tol),
                    "detail": f"largest excess of {p} over {f} accuracy: {gap * 100:+.1f} points at eps={eps:g} "
                              f"(tolerance {tol * 100:.1f})"})
    rises = []
    for k, accs in by.items():
        es = sorted(accs)
        rises += [(accs[b] - accs[a], k, a, b) for a, b in zip(es, es[1:])]
    if rises:
        rise, k, a, b = max(rises)
        out.append({"check": "accuracy non-increasing in eps",
                    "status": _status(rise <= tol, rise <= 3 * tol),
                    "detail": f"largest rise: {rise * 100:+.1f} points ({k}, eps {a:g} -> {b:g})"})
    out += masking_checks(records, raw)
    full = raw["full_range"]
    chance = 1.0 / num_classes
    acc = full["adversarial_accuracy"]
    out.append({"check": "eps covering the whole value range drives accuracy to chance or below",
                "status": _status(acc <= chance + tol, acc <= 2 * chance),
                "detail": f"PGD-{full['steps']} at eps={full['eps']:g}: accuracy {acc * 100:.1f}% on {full['n']} "
                          f"images (chance {chance * 100:.1f}%)"})
    out += model_checks(raw)
    z = raw["zero_gradient_fraction"]
    out.append({"check": "no large fraction of zero input gradients",
                "status": _status(z <= 0.01, z <= 0.10),
                "detail": f"{z * 100:.1f}% of {raw['n_gradient']} images have an input gradient of exactly zero"})
    return out


def model_checks(raw: dict) -> list[dict]:
    """Checks of the model itself, whose failure makes every robustness number of it meaningless or suspect.

    A model that gives (nearly) every image one class has an accuracy under attack equal to that
    class's share, and looks as robust as it is accurate; a sigmoid head is attacked through its
    log-odds, correct for ranking classes but not what a softmax classifier's numbers mean; a value
    range that contradicts the model's own leading Rescaling layer scales every eps wrongly.
    Runs made before these checks have no such measurements and get none of these rows.
    """
    out = []
    majority = raw.get("majority")
    if majority:
        share = majority["share"]
        out.append({"check": "the model predicts more than one class",
                    "status": _status(share < 0.9, share < 0.99),
                    "detail": f"class {majority['class']} gets {share * 100:.1f}% of {majority['n']} clean "
                              "predictions" + (": a constant classifier; its accuracy under attack is that class's "
                                               "share, not robustness" if share >= 0.99 else "")})
    kind = raw.get("logits_kind")
    if kind is not None:
        sigmoid = "sigmoid" in kind
        out.append({"check": "the model outputs logits (or a softmax robust removes)",
                    "status": "warn" if sigmoid else "pass",
                    "detail": f"attacked through {kind}" + (": a sigmoid head scores each class on its own (a "
                                                             "multi-label model?), so accuracy and robustness "
                                                             "treat its highest score as the prediction"
                                                             if sigmoid else "")})
    if "value_range_conflict" in raw:
        conflict = raw["value_range_conflict"]
        out.append({"check": "the value range agrees with the model's leading Rescaling layer",
                    "status": "warn" if conflict else "pass",
                    "detail": conflict or "no conflict (no leading Rescaling layer, or one that agrees)"})
    return out


#: Square may break at most this share of the points the white-box attacks left standing (issue 9: 0.5 points).
SQUARE_TOLERANCE = 0.005


def masking_checks(records: list[dict], raw: dict) -> list[dict]:
    """The checks a black-box attack and a longer attack make possible (Croce & Hein 2020; Carlini et al. 2019).

    * Square, score-based, cannot be fooled by broken gradients: in the ``auto`` ensemble it
      runs on the points APGD-CE and APGD-T left standing, so every point it breaks is one the
      white-box attacks missed. More than 0.5 points of them means the gradients mislead.
    * PGD-100 against PGD-40 on a slice (``raw["more_steps"]``, measured by :func:`gradient_checks`):
      if more steps still find many new points, 40 steps had not converged.

    A check whose measurement is absent (no ``auto`` records, a run made before it existed) is left out.
    """
    out = []
    square = [(r["details"]["broken_by"].get("square", 0) / r["n"], r["eps"], r["details"])
              for r in records if r.get("attack") == "auto" and r["eps"] > 0 and r.get("details")]
    if square:
        share, eps, details = max(square, key=lambda t: t[0])
        skipped = [s for rec in square for s in rec[2].get("skipped", [])]
        detail = (f"Square broke {share * 100:.1f}% of the points that APGD-CE and APGD-T left standing (worst at "
                  f"eps={eps:g}; tolerance {SQUARE_TOLERANCE * 100:.1f})")
        if skipped:
            detail += f"; gradient attacks skipped (no usable gradient): {', '.join(sorted(set(skipped)))}"
        out.append({"check": "Square does not beat the white-box attacks",
                    "status": "fail" if skipped else _status(share <= SQUARE_TOLERANCE, share <= 4 * SQUARE_TOLERANCE),
                    "detail": detail})
    steps = raw.get("more_steps")
    if steps:
        (few, many), (a_few, a_many) = steps["steps"], steps["accuracy"]
        gain, tol = a_few - a_many, max(0.01, 2.0 / steps["n"])
        out.append({"check": f"PGD-{many} finds little more than PGD-{few}",
                    "status": _status(gain <= tol, gain <= 3 * tol),
                    "detail": f"accuracy {a_few * 100:.1f}% under PGD-{few}, {a_many * 100:.1f}% under PGD-{many} at "
                              f"eps={steps['eps']:g} on {steps['n']} images (gain {gain * 100:+.1f} points, "
                              f"tolerance {tol * 100:.1f})"})
    return out


def transfer_checks(matrix: dict, labels: dict) -> dict[str, list[dict]]:
    """Per target model, whether a transfer attack beats its white-box attack (Athalye et al. 2018).

    Args:
        matrix: ``{"accuracy": {source: {target: accuracy}}, "n", "eps", "attack"}``: each target's
            accuracy on the adversarial examples made on each source, on the same images; the
            diagonal is the white-box attack.
        labels: model key -> label, for the text.

    Returns:
        model key -> a one-element list with the check (models with no other source get none).
        Adversarial examples made on another model are a weaker attack than the gradient of the
        model itself; when they do better, the model's own gradient misleads the attack.
    """
    acc, n = matrix["accuracy"], matrix["n"]
    tol = max(0.01, 2.0 / n)
    out = {}
    for target in acc:
        if target not in acc[target]:
            continue
        own = acc[target][target]
        others = [(acc[s][target], s) for s in acc if s != target and target in acc[s]]
        if not others:
            continue
        best, source = min(others)
        gap = own - best
        out[target] = [{"check": "white-box attack at least as strong as transfer from the other models",
                        "status": _status(gap <= tol, gap <= 3 * tol),
                        "detail": f"{matrix['attack'].upper()} at eps={matrix['eps']:g} on {n} images: white-box "
                                  f"accuracy {own * 100:.1f}%, transferred from {labels.get(source, source)} "
                                  f"{best * 100:.1f}% (gap {gap * 100:+.1f} points, tolerance {tol * 100:.1f})"}]
    return out
