"""Robustness numbers of a model under an attack, one row per eps, and figures of the examples.

:func:`evaluate_attack` is what ``robust attack`` prints and what studies
call, so the command line and reports always agree. The figure functions
return PNG bytes; writing them is the caller's business.
"""

from __future__ import annotations

import io
import math
from typing import Any, Callable, Sequence

import numpy as np

from robust.attacks import AttackResult, FoolingResult, get_attack
from robust.errors import RobustError
from robust.gradients import check_images, check_value_range


def summarize(result: AttackResult) -> dict[str, Any]:
    """The row of :func:`evaluate_attack` for one attack result.

    ``success_rate``: untargeted, the fraction of the images the model
    classified correctly that the attack flipped; targeted, the fraction of
    the images not already labelled as the target that end up classified as
    it. ``None`` when no image qualifies.
    """
    labels, clean, adv = result.labels, result.clean_pred, result.adv_pred
    if result.target is not None:
        eligible = labels != result.target
        hits = adv[eligible] == result.target[eligible]
    else:
        eligible = clean == labels
        hits = adv[eligible] != labels[eligible]
    return {
        "eps": float(result.eps),
        "n": int(len(labels)),
        "clean_accuracy": float(np.mean(clean == labels)),
        "adversarial_accuracy": float(np.mean(adv == labels)),
        "success_rate": float(np.mean(hits)) if len(hits) else None,
        "mean_perturbation": float(np.mean(result.perturbation)),
        "max_perturbation": float(np.max(result.perturbation)),
        "seconds": float(result.seconds),
        "norm": result.norm,
        "attack": result.attack,
        "params": dict(result.params),
        "labels_from": result.labels_from,
    }


def evaluate_attack(model, attack_name: str, x: np.ndarray, y: np.ndarray | None, eps_list: Sequence[float], *,
                    value_range: Sequence[float] = (0.0, 1.0), batch_size: int = 256, seed: int = 0,
                    target: int | np.ndarray | None = None, indices: np.ndarray | None = None,
                    progress: bool = False, on_result: Callable[[AttackResult], None] | None = None,
                    **attack_params: Any) -> list[dict[str, Any]]:
    """Attack ``x`` once per eps and report accuracy, success and perturbation size.

    Every eps is validated before the first attack runs.

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
    rows = []
    for attack in attacks:
        result = attack(model, x, y, value_range=(low, high), batch_size=batch_size, target=target,
                        indices=indices, progress=progress)
        rows.append(summarize(result))
        if on_result is not None:
            on_result(result)
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows of :func:`evaluate_attack` as a fixed-width text table."""
    norm = {"inf": "Linf", "2": "L2"}.get(rows[0]["norm"], rows[0]["norm"]) if rows else ""
    head = (f"{'eps':>8}  {'clean acc':>9}  {'adv acc':>8}  {'success':>8}  "
            f"{'mean ' + norm:>9}  {'max ' + norm:>9}  {'seconds':>8}")
    lines = [head]
    for r in rows:
        success = "-" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f}%"
        lines.append(f"{r['eps']:>8g}  {100 * r['clean_accuracy']:>8.1f}%  {100 * r['adversarial_accuracy']:>7.1f}%  "
                     f"{success:>8}  {r['mean_perturbation']:>9.4f}  {r['max_perturbation']:>9.4f}  "
                     f"{r['seconds']:>8.2f}")
    return "\n".join(lines)


# --------------------------------------------------------------------- figures

def _figure(rows: int, cols: int, size: float = 1.5):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _show(ax, image: np.ndarray, value_range: tuple[float, float]):
    low, high = value_range
    img = (np.asarray(image, np.float32) - low) / (high - low)
    if img.ndim == 3 and img.shape[-1] == 1:
        ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(np.clip(img, 0, 1))


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _name(class_names: Sequence[str] | None, index: int) -> str:
    return str(class_names[index]) if class_names is not None and 0 <= index < len(class_names) else str(index)


def examples_png(x: np.ndarray, result: AttackResult, *, class_names: Sequence[str] | None = None,
                 value_range: Sequence[float] = (0.0, 1.0), count: int = 8) -> bytes:
    """A grid of clean / perturbation / adversarial images with predicted labels and confidences.

    Successful examples are shown first. Returns PNG bytes.
    """
    low, high = check_value_range(value_range)
    order = np.concatenate([np.flatnonzero(result.success), np.flatnonzero(~result.success)])[:count]
    fig, axes = _figure(3, max(1, len(order)))
    for col, i in enumerate(order):
        delta = result.x_adv[i] - x[i]
        _show(axes[0, col], x[i], (low, high))
        axes[0, col].set_title(f"{_name(class_names, result.clean_pred[i])} "
                               f"{100 * result.clean_confidence[i]:.0f}%", fontsize=8)
        span = float(np.abs(delta).max()) or 1.0
        axes[1, col].imshow(delta.mean(axis=-1) if delta.ndim == 3 else delta, cmap="RdBu", vmin=-span, vmax=span)
        axes[1, col].set_title(f"|d|={result.perturbation[i]:.3g}", fontsize=8)
        _show(axes[2, col], result.x_adv[i], (low, high))
        axes[2, col].set_title(f"{_name(class_names, result.adv_pred[i])} "
                               f"{100 * result.adv_confidence[i]:.0f}%", fontsize=8,
                               color="red" if result.success[i] else "black")
    for row, label in enumerate(("clean", "perturbation", "adversarial")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    norm = {"inf": "L-inf", "2": "L2"}.get(result.norm, result.norm)
    fig.suptitle(f"{result.attack.upper()} {norm} eps={result.eps:g}", fontsize=10)
    return _png(fig)


def fooling_png(result: FoolingResult, class_index: int, *, class_names: Sequence[str] | None = None,
                value_range: Sequence[float] = (0.0, 1.0)) -> bytes:
    """The fooling images grown for one class, titled with the model's confidence. Returns PNG bytes."""
    low, high = check_value_range(value_range)
    picks = np.flatnonzero(result.target == class_index)
    if len(picks) == 0:
        raise RobustError(f"No fooling images for class {class_index} in this result.")
    cols = min(len(picks), 8)
    fig, axes = _figure(math.ceil(len(picks) / cols), cols)
    for ax in axes.flat[len(picks):]:
        ax.axis("off")
    for ax, i in zip(axes.flat, picks):
        _show(ax, result.images[i], (low, high))
        ax.set_title(f"{100 * result.confidence[i]:.1f}% ({result.steps[i]} steps)", fontsize=7,
                     color="black" if result.reached[i] else "red")
    fig.suptitle(f"fooling images for {_name(class_names, class_index)!r}", fontsize=10)
    return _png(fig)
