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


def example_arrays(x: np.ndarray, result, value_range, count: int = 8, *, successes_first: bool = True) -> dict:
    """The arrays :func:`examples_grid` draws, from an :class:`~robust.attacks.AttackResult` on images ``x``.

    Images are mapped from ``value_range`` to [0, 1]; with ``successes_first`` the
    images the attack fooled come first, else the first ``count`` in order.
    """
    lo, hi = (float(v) for v in value_range)
    if successes_first:
        order = np.concatenate([np.flatnonzero(result.success), np.flatnonzero(~result.success)])[:count]
    else:
        order = np.arange(min(count, len(x)))
    return {"example_x": (np.asarray(x[order], np.float32) - lo) / (hi - lo), "example_y": result.labels[order],
            "example_adv": (result.x_adv[order] - lo) / (hi - lo), "example_clean_pred": result.clean_pred[order],
            "example_clean_conf": result.clean_confidence[order], "example_adv_pred": result.adv_pred[order],
            "example_adv_conf": result.adv_confidence[order]}


def fooling_arrays(result, value_range, pick: np.ndarray | None = None) -> dict:
    """The arrays :func:`fooling_gallery` draws, from a :class:`~robust.attacks.FoolingResult` (``pick``: a subset)."""
    lo, hi = (float(v) for v in value_range)
    pick = np.arange(len(result.target)) if pick is None else pick
    return {"fooling_images": (result.images[pick] - lo) / (hi - lo), "fooling_target": result.target[pick],
            "fooling_confidence": result.confidence[pick], "fooling_steps": result.steps[pick],
            "fooling_reached": result.reached[pick]}


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


def radius_cdf(results: dict, head: dict, path: Path) -> str | None:
    """The robustness radius's CDF per model: share of images broken at or below each eps of the grid.

    ``head`` is :func:`robust.report.robustness.headline`; ConvNets solid, fully connected dashed. The
    curve is a step function (the radius is known on the grid only), starting at the clean mistakes;
    where a minimum-norm attack ran in the same norm, its per-image radii add a dotted curve.
    """
    if not head["models"]:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for key, m in head["models"].items():
        cdf = m["radius"]["cdf"]
        if not cdf:
            continue
        conv = results["models"][key]["kind"] == "conv"
        median = m["radius"]["median"]
        line = ax.step([e for e, _ in cdf], [100 * share for _, share in cdf], where="post",
                       linestyle="-" if conv else "--", marker="o" if conv else "s",
                       label=f"{m['label']} (median {'> ' + format(cdf[-1][0], 'g') if median is None else format(median, 'g')})")
        minimal = m.get("minimal")
        if minimal and minimal["cdf"]:  # a minimum-norm attack ran: each image's own radius, not the grid's
            ax.plot([r for r, _ in minimal["cdf"]], [100 * share for _, share in minimal["cdf"]],
                    color=line[0].get_color(), linestyle=":", linewidth=1.5,
                    label=f"{m['label']}, minimal ({minimal['attack']}; median "
                          f"{'beyond' if minimal['median'] is None else format(minimal['median'], '.3g')})")
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("eps")
    ax.set_ylabel("images broken at or below eps (%)")
    ax.set_ylim(-2, 102)
    what = head["attack"].upper() if head["attack"] else "worst case of the attacks"
    ax.set_title(f"Robustness radius ({what}): cumulative distribution")
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
    if "fooling_images" not in arrays or len(arrays["fooling_images"]) == 0:
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


def _for_display(img) -> np.ndarray:
    """An image in [0, 1] with pixels outside the input (NaN: padding of a receptive field) shown light grey."""
    img = np.asarray(img, np.float32)
    return np.where(np.isnan(img), 0.85, img)


def _stretch(img) -> np.ndarray:
    """Contrast-stretch one image to [0, 1] (activation-maximisation images use a small part of the range)."""
    img = np.asarray(img, np.float32)
    lo, hi = float(np.nanmin(img)), float(np.nanmax(img))
    return (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)


def unit_grid(layer: str, units, maximized, crops, top_values, path: Path, *, activations=None,
              receptive_field: str = "") -> str:
    """One row per unit: the image grown to excite it, then its top activating images cropped to its field.

    Args:
        layer: the layer's name (the title).
        units: (U,) unit indices.
        maximized: (U, h, w, C) activation-maximisation images in [0, 1] (contrast-stretched here; NaN
            outside the image).
        crops: (U, K, h, w, C) top crops in [0, 1], NaN outside the image; K may be 0.
        top_values: (U, K) the unit's activation on each crop.
        path: the PNG to write.
        activations: ``(start, value)``, (U,) each: the unit's activation on the starting noise and on the
            grown image; the gain (or ``dead``) is shown under each unit (:func:`robust.visualize.gain_label`).
        receptive_field: a description of the field, for the title.

    Returns:
        The PNG's file name.
    """
    from robust.visualize import gain_label, unit_gains

    plt = _plt()
    u, k = len(units), (crops.shape[1] if crops is not None and crops.ndim == 5 else 0)
    fig, axes = plt.subplots(u, 1 + k, figsize=(1.15 * (1 + k) + 0.6, 1.2 * u + 0.5), squeeze=False)
    for r in range(u):
        _show(axes[r, 0], _for_display(_stretch(maximized[r])))
        label = f"unit {int(units[r])}"
        if activations is not None:
            start, value = activations
            gain, dead = unit_gains(start, value)
            label += "\n" + gain_label(float(start[r]), float(value[r]), float(gain[r]), bool(dead[r]))
        axes[r, 0].set_ylabel(label, fontsize=7)
        for c in range(k):
            _show(axes[r, 1 + c], _for_display(crops[r, c]))
            axes[r, 1 + c].set_title(f"{float(top_values[r, c]):.2g}", fontsize=6)
    axes[0, 0].set_title("grown", fontsize=7)
    title = f"{layer}: grown image" + (f", then the top {k} test images" if k else "")
    fig.suptitle(title + (f" ({receptive_field})" if receptive_field else ""), fontsize=8)
    return _save(fig, path)


def rf_text(vector, image: tuple[int, int] | None = None) -> str:
    """A receptive field given as :func:`robust.visualize.rf_vector`, in words (``image``: its H, W)."""
    v = [int(a) for a in np.asarray(vector).ravel()]
    if len(v) != 7 or v[0] < 0:
        return "receptive field unknown"
    if not v[6]:
        return "each unit sees the whole image"
    if image is not None and (v[0] >= image[0] and v[1] >= image[1]):
        return f"receptive field {v[0]}x{v[1]} px, step {v[2]}: it covers the whole {image[0]}x{image[1]} image"
    return f"cropped to the receptive field: {v[0]}x{v[1]} px, step {v[2]}"


def learned_figures(arrays, key: str, fig_dir: Path) -> list[dict]:
    """The report's "What the network learned" figures of one model: one :func:`unit_grid` per layer.

    Returns a list of ``{"png", "layer", "receptive_field", "dead"}`` (``dead``: the units no input made fire,
    whose grown images are noise); empty when the arrays have none (older runs).
    """
    if "learned_layers" not in arrays.files:
        return []
    out = []
    for i, layer in enumerate(str(n) for n in arrays["learned_layers"]):
        start, value = arrays[f"learned{i}_start"], arrays[f"learned{i}_value"]
        image = tuple(arrays["example_x"].shape[1:3]) if "example_x" in arrays.files else None
        rf = rf_text(arrays[f"learned{i}_rf"], image)
        png = unit_grid(layer, arrays[f"learned{i}_units"], arrays[f"learned{i}_max"], arrays[f"learned{i}_top"],
                        arrays[f"learned{i}_top_value"], fig_dir / f"learned_{key}_{i}.png", activations=(start, value),
                        receptive_field=rf)
        from robust.visualize import unit_gains

        dead = [int(u) for u, d in zip(arrays[f"learned{i}_units"], unit_gains(start, value)[1]) if d]
        out.append({"png": png, "layer": layer, "receptive_field": rf, "dead": dead})
    return out
