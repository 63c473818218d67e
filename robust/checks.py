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
                    attack_params: dict | None = None, n_full: int = 200) -> dict:
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
    return {
        "zero_gradient_fraction": float(zero.mean()),
        "n_gradient": int(len(x)),
        "full_range": {"eps": hi - lo, "attack": "pgd", "steps": 10, "n": n_full,
                       "adversarial_accuracy": float(np.mean(res.adv_pred == y[:n_full]))},
    }


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
    full = raw["full_range"]
    chance = 1.0 / num_classes
    acc = full["adversarial_accuracy"]
    out.append({"check": "eps covering the whole value range drives accuracy to chance or below",
                "status": _status(acc <= chance + tol, acc <= 2 * chance),
                "detail": f"PGD-{full['steps']} at eps={full['eps']:g}: accuracy {acc * 100:.1f}% on {full['n']} "
                          f"images (chance {chance * 100:.1f}%)"})
    z = raw["zero_gradient_fraction"]
    out.append({"check": "no large fraction of zero input gradients",
                "status": _status(z <= 0.01, z <= 0.10),
                "detail": f"{z * 100:.1f}% of {raw['n_gradient']} images have an input gradient of exactly zero"})
    return out
