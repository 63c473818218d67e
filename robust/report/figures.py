"""The report's figures, drawn with matplotlib from results.json and the saved arrays (no recomputation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, img, cmap=None):
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    ax.imshow(np.clip(img, 0, 1), cmap=cmap or ("gray" if img.ndim == 2 else None), vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _save(fig, path: Path) -> str:
    from robust.artifacts import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    _plt().close(fig)
    return path.name


def accuracy_curves(results: dict, attack_key: str, path: Path) -> str:
    """Adversarial accuracy vs eps for every model under one attack; ConvNets solid, FC dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, info in results["models"].items():
        rows = sorted((r for r in results["records"] if r["model"] == key and r["attack_key"] == attack_key),
                      key=lambda r: r["eps"])
        conv = info["kind"] == "conv"
        ax.plot([r["eps"] for r in rows], [100 * r["adversarial_accuracy"] for r in rows],
                linestyle="-" if conv else "--", marker="o" if conv else "s",
                label=f"{info['label']} ({'conv' if conv else 'fully connected'})")
    chance = 100 / len(results["run"]["data"]["class_names"])
    ax.axhline(chance, color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set_xlabel("eps (L-inf)" if "-l2" not in attack_key else "eps (L2)")
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"{attack_key.upper()}: accuracy vs perturbation size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def examples_grid(arrays, class_names, eps: float, attack: str, path: Path) -> str:
    """Clean / perturbation (scaled to be visible) / adversarial, with predictions and confidences."""
    plt = _plt()
    x, adv = arrays["example_x"], arrays["example_adv"]
    k = len(x)
    fig, axes = plt.subplots(3, k, figsize=(1.3 * k, 4.6), squeeze=False)
    delta = adv - x
    scale = max(float(np.abs(delta).max()), 1e-12)
    for i in range(k):
        _show(axes[0, i], x[i])
        axes[0, i].set_title(f"{class_names[int(arrays['example_clean_pred'][i])]} "
                             f"{100 * float(arrays['example_clean_conf'][i]):.0f}%", fontsize=7)
        _show(axes[1, i], 0.5 + delta[i] / (2 * scale))
        _show(axes[2, i], adv[i])
        wrong = int(arrays["example_adv_pred"][i]) != int(arrays["example_y"][i])
        axes[2, i].set_title(f"{class_names[int(arrays['example_adv_pred'][i])]} "
                             f"{100 * float(arrays['example_adv_conf'][i]):.0f}%", fontsize=7,
                             color="crimson" if wrong else "black")
    for row, label in enumerate(("clean", f"perturbation\n(x{0.5 / scale:.1f})", f"{attack}\neps={eps:g}")):
        axes[row, 0].set_ylabel(label, fontsize=8)
    return _save(fig, path)


def fooling_gallery(arrays, class_names, threshold: float, path: Path) -> str | None:
    if "fooling_images" not in arrays.files or len(arrays["fooling_images"]) == 0:
        return None
    plt = _plt()
    imgs = arrays["fooling_images"]
    n = len(imgs)
    cols = min(n, 10)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.55 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        _show(ax, imgs[i])
        ax.axis("on")
        reached = bool(arrays["fooling_reached"][i])
        ax.set_title(f"{class_names[int(arrays['fooling_target'][i])]}\n"
                     f"{100 * float(arrays['fooling_confidence'][i]):.1f}%", fontsize=7,
                     color="black" if reached else "grey")
    fig.suptitle(f"noise classified with >= {100 * threshold:g}% confidence (grey: threshold not reached)",
                 fontsize=8)
    return _save(fig, path)


def saliency_grid(arrays, class_names, path: Path) -> str | None:
    x, sal = arrays["saliency_x"], arrays["saliency"]
    if len(x) == 0:
        return None
    plt = _plt()
    k = len(x)
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 3.0), squeeze=False)
    for i in range(k):
        _show(axes[0, i], x[i])
        axes[0, i].set_title(class_names[int(arrays["saliency_y"][i])], fontsize=7)
        s = np.asarray(sal[i])
        s = s[..., 0] if s.ndim == 3 else s
        _show(axes[1, i], s / max(float(s.max()), 1e-12), cmap="hot")
    axes[0, 0].set_ylabel("image", fontsize=8)
    axes[1, 0].set_ylabel("|input gradient|", fontsize=8)
    return _save(fig, path)


def filter_grid(arrays, kind: str, path: Path) -> str | None:
    f = arrays["filters"]
    if len(f) == 0 or f.shape[1] == 1:
        return None
    plt = _plt()
    n = len(f)
    cols = min(n, 8)
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(1.1 * cols, 1.1 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        img = f[i] if f.shape[-1] in (1, 3) else f[i].mean(axis=-1)
        _show(axes.flat[i], img)
    fig.suptitle("first conv layer filters" if kind == "conv" else "first dense layer weights (one unit each)",
                 fontsize=8)
    return _save(fig, path)
