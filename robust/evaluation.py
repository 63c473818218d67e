"""Robustness numbers of a model under an attack, one row per eps.

:func:`evaluate_attack` is what ``robust attack`` prints and what studies
call, so the command line and reports always agree. Figures of the examples
are drawn by :mod:`robust.report.figures`, the one figure module.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from robust.attacks import AttackResult, get_attack
from robust.errors import RobustError
from robust.gradients import check_images, check_value_range


def summarize(result: AttackResult) -> dict[str, Any]:
    """The row of :func:`evaluate_attack` for one attack result.

    ``success_rate``: untargeted, the fraction of the images the model
    classified correctly that the attack flipped; targeted, the fraction of
    the images not already labelled as the target that end up classified as
    it. ``None`` when no image qualifies.

    ``mean_perturbation`` and ``max_perturbation`` are taken over those
    flipped images only (the adversarial examples the attack found; in a
    sweep, the smallest found up to this eps), ``None`` when there are none.
    Clean mistakes need no perturbation and unbroken images have none that
    counts, so neither enters: the numbers do not depend on whether eps 0,
    or a smaller eps, came first on the grid.
    """
    labels, clean, adv = result.labels, result.clean_pred, result.adv_pred
    if result.target is not None:
        eligible = labels != result.target
        hits = adv[eligible] == result.target[eligible]
    else:
        eligible = clean == labels
        hits = adv[eligible] != labels[eligible]
    flipped = result.perturbation[np.flatnonzero(eligible)[hits]]
    minimal = {}
    if result.radius is not None:  # a minimum-norm attack: each image's radius, whatever the eps
        summary = minimal_radius_summary(result.radius)
        minimal = {"minimal_radius": {k: v for k, v in summary.items() if k != "per_image"}}
    return {
        "eps": float(result.eps),
        "n": int(len(labels)),
        "clean_accuracy": float(np.mean(clean == labels)),
        "adversarial_accuracy": float(np.mean(adv == labels)),
        "success_rate": float(np.mean(hits)) if len(hits) else None,
        "mean_perturbation": float(np.mean(flipped)) if len(flipped) else None,
        "max_perturbation": float(np.max(flipped)) if len(flipped) else None,
        "seconds": float(result.seconds),
        "norm": result.norm,
        "attack": result.attack,
        "params": dict(result.params),
        "labels_from": result.labels_from,
        **({"details": result.details} if result.details else {}),
        **minimal,
    }


def evaluate_attack(model, attack_name: str, x: np.ndarray, y: np.ndarray | None, eps_list: Sequence[float], *,
                    value_range: Sequence[float] = (0.0, 1.0), batch_size: int = 256, seed: int = 0,
                    target: int | np.ndarray | None = None, indices: np.ndarray | None = None,
                    progress: bool = False, on_result: Callable[[AttackResult], None] | None = None,
                    **attack_params: Any) -> list[dict[str, Any]]:
    """Attack ``x`` at every eps, in ascending order, and report accuracy, success and perturbation size.

    Every eps is validated before the first attack runs. The eps run as a
    sweep: an adversarial example found at a smaller eps lies inside every
    larger ball, so each eps attacks only the points still standing and keeps
    the examples already found. Accuracy therefore never rises with eps, and
    ``1 - adversarial_accuracy(eps)`` is the share of images whose smallest
    breaking eps (their robustness radius on this grid) is at most ``eps``.

    Args:
        model: a Keras classifier.
        attack_name: a registered attack (``"fgsm"``, ``"pgd"``, plugins).
        x, y: images and true labels (``None``: the model's predictions, reported in ``labels_from``).
        eps_list: radii to try; ``0`` gives the clean accuracy.
        value_range, batch_size, target: passed to the attack call.
        seed: the attack's seed.
        indices: the images' global indices (their random keys; default ``0..n-1``).
        progress: progress bars over batches.
        on_result: called with each :class:`AttackResult` (e.g. to save example images).
        **attack_params: the attack's other hyper-parameters (``norm``, ``steps``, ...).

    Returns:
        One dict per eps with ``eps, n, clean_accuracy, adversarial_accuracy,
        success_rate, mean_perturbation, max_perturbation`` (in the attack's
        norm), ``seconds, norm, attack, params, labels_from``.

    Example:
        >>> rows = evaluate_attack(model, "pgd", x_test, y_test, [0, 0.1, 0.3], steps=40)
        >>> [r["adversarial_accuracy"] for r in rows]
    """
    if isinstance(eps_list, (int, float)):
        eps_list = [eps_list]
    eps_list = list(eps_list)
    if not eps_list:
        raise RobustError("eps_list is empty; give at least one eps, such as [0, 0.1, 0.3].")
    low, high = check_value_range(value_range)
    x = check_images(model, x, (low, high))
    attacks = [get_attack(attack_name, eps=eps, seed=seed, **attack_params) for eps in eps_list]
    for attack in attacks:
        attack.check_eps(x.shape[1:], (low, high))
    rows: list[dict[str, Any] | None] = [None] * len(attacks)
    previous = None
    for i in sorted(range(len(attacks)), key=lambda j: attacks[j].eps):
        result = attacks[i](model, x, y, value_range=(low, high), batch_size=batch_size, target=target,
                            indices=indices, mask=None if previous is None else ~previous.success, progress=progress)
        if previous is not None:
            seconds = result.seconds
            result = result.worst_of(previous)
            result.seconds = seconds
        rows[i] = summarize(result)
        if on_result is not None:
            on_result(result)
        previous = result
    return rows


def smallest_breaking_eps(results: Sequence[AttackResult]) -> np.ndarray:
    """Each image's robustness radius on a sweep's grid: the smallest eps whose attack broke it.

    Args:
        results: the sweep's results (as :func:`evaluate_attack` passes them to ``on_result``), any order.

    Returns:
        Per image, the smallest eps at which it is misclassified (0 for a clean mistake);
        ``inf`` where no eps of the grid broke it.
    """
    if not results:
        return np.zeros(0)
    ordered = sorted(results, key=lambda r: r.eps)
    first = ordered[0]
    radius = np.where((first.clean_pred != first.labels) & (first.target is None), 0.0, np.inf)
    for r in ordered:
        radius = np.where(np.isinf(radius) & r.success, r.eps, radius)
    return radius


def radius_summary(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The distribution of the robustness radius from a sweep's rows (one model, one attack).

    In a sweep an image broken at eps stays broken at every larger eps, so the share of
    images whose radius is at most eps is ``1 - adversarial_accuracy(eps)``: the rows hold the
    radius's CDF on the grid, the same as :func:`smallest_breaking_eps` counts per image.

    Returns:
        ``{"cdf": [[eps, share broken], ...], "median": eps or None, "beyond": share never broken}``:
        ``median`` is the smallest grid eps at which at least half the images are broken, ``None``
        when more than half survive the largest eps (the median lies beyond the grid).
    """
    rows = sorted(rows, key=lambda r: r["eps"])
    cdf = [[float(r["eps"]), 1.0 - float(r["adversarial_accuracy"])] for r in rows]
    median = next((e for e, share in cdf if share >= 0.5), None)
    return {"cdf": cdf, "median": median, "beyond": 1.0 - cdf[-1][1] if cdf else None}


def _middle(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile of ``values`` (``inf`` allowed) by linear interpolation; ``inf`` if a neighbour is."""
    a = np.sort(values)
    at = q * (len(a) - 1)
    lo, hi = int(np.floor(at)), int(np.ceil(at))
    if np.isinf(a[lo]) or np.isinf(a[hi]):
        return float("inf")
    return float(a[lo] + (a[hi] - a[lo]) * (at - lo))


def minimal_radius_summary(radius: np.ndarray, *, points: int = 10) -> dict[str, Any]:
    """The distribution of each image's minimal perturbation from a minimum-norm attack.

    Args:
        radius: :attr:`AttackResult.radius`: per image the smallest adversarial perturbation found
            (0 for a clean mistake, ``inf`` where none was found, ``nan`` where not attacked).
        points: how many points of the CDF to keep (at the radii where 1/points, 2/points, ... of
            the images are broken).

    Returns:
        ``{"n", "median", "quartiles", "never_broken", "cdf", "per_image"}``: ``median`` and the
        quartiles (25%, 50%, 75%; linear interpolation, so the median of an even count is the mean
        of the two middle values) are ``None`` where they lie among the images never broken;
        ``cdf`` holds ``[radius, share of images broken within it]``; ``per_image`` the radii
        (``None`` for never broken or not attacked).
    """
    values = np.asarray(radius, dtype=np.float64)
    attacked = values[~np.isnan(values)]
    finite = lambda v: None if not np.isfinite(v) else v  # noqa: E731
    if len(attacked) == 0:
        return {"n": 0, "median": None, "quartiles": [None] * 3, "never_broken": None, "cdf": [], "per_image": []}
    cdf = []
    for k in range(1, points + 1):
        r = _middle(attacked, k / points)
        if np.isfinite(r):
            cdf.append([r, float(np.mean(attacked <= r))])
    return {"n": int(len(attacked)), "median": finite(_middle(attacked, 0.5)),
            "quartiles": [finite(_middle(attacked, q)) for q in (0.25, 0.5, 0.75)],
            "never_broken": float(np.mean(np.isinf(attacked))), "cdf": cdf,
            "per_image": [None if not np.isfinite(v) else float(v) for v in values]}


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`evaluate_attack` as a fixed-width text table."""
    norm = {"inf": "Linf", "2": "L2", "1": "L1"}.get(rows[0]["norm"], rows[0]["norm"]) if rows else ""
    head = (f"{'eps':>8}  {'clean acc':>9}  {'adv acc':>8}  {'success':>8}  "
            f"{'mean ' + norm:>9}  {'max ' + norm:>9}  {'seconds':>8}")
    lines = [head]
    for r in rows:
        success = "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}%"
        mean, most = ("-" if r[k] is None else f"{r[k]:.4f}" for k in ("mean_perturbation", "max_perturbation"))
        lines.append(f"{r['eps']:>8g}  {100 * r['clean_accuracy']:>8.1f}%  {100 * r['adversarial_accuracy']:>7.1f}%  "
                     f"{success:>8}  {mean:>9}  {most:>9}  {r['seconds']:>8.2f}")
    return "\n".join(lines)
