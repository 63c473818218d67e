"""Findings written from the numbers of a study: which model is more accurate, which more robust, by how much."""

from __future__ import annotations

import statistics


def _pct(v: float) -> str:
    return f"{100 * v:.1f}%"


def _eps50(rows: list[dict]) -> float | None:
    """The eps at which accuracy falls to half the clean accuracy (linear interpolation), or None."""
    rows = sorted(rows, key=lambda r: r["eps"])
    if not rows:
        return None
    half = rows[0]["clean_accuracy"] / 2
    for a, b in zip(rows, rows[1:]):
        if a["adversarial_accuracy"] >= half > b["adversarial_accuracy"]:
            span = a["adversarial_accuracy"] - b["adversarial_accuracy"]
            return a["eps"] + (b["eps"] - a["eps"]) * (a["adversarial_accuracy"] - half) / span
    return None


def findings(results: dict, learned: dict | None = None) -> list[str]:
    """Plain sentences, each built from measured values in ``results`` and ``learned`` (:func:`locality_findings`)."""
    models = results["models"]
    out: list[str] = []
    failing = {k for k, m in models.items() if any(c["status"] == "fail" for c in m["checks"])}
    for k in failing:
        bad = [c["check"] for c in models[k]["checks"] if c["status"] == "fail"]
        out.append(f"{models[k]['label']} fails the sanity check(s) {'; '.join(bad)}. Its accuracy under attack "
                   "measures the attack's failure, not robustness (the signature of gradient masking); "
                   "it is left out of the robustness comparisons below.")
    out += _capacity_findings(models)
    out += _attack_findings(results, models, failing)
    out += adversarial_findings(results, failing)
    out += _fooling_findings(results, models)
    return out + locality_findings(models, learned or {})


def _capacity_findings(models: dict) -> list[str]:
    """Clean accuracy against parameter count, and ConvNet against fully connected at equal capacity."""
    out: list[str] = []
    by_acc = sorted(models.items(), key=lambda kv: -kv[1]["test_accuracy"])
    best_k, best = by_acc[0]
    others = ", ".join(f"{m['label']} {_pct(m['test_accuracy'])} ({m['params']:,} parameters)"
                       for _, m in by_acc[1:])
    out.append(f"Most accurate on clean test data: {best['label']} with {_pct(best['test_accuracy'])} "
               f"and {best['params']:,} parameters" + (f", against {others}." if others else "."))

    convs = {k: m for k, m in models.items() if m["kind"] == "conv"}
    fcs = {k: m for k, m in models.items() if m["kind"] == "fc"}
    for ck, c in convs.items():
        for fk, f in fcs.items():
            if _threat(c) != _threat(f):  # compare architectures trained the same way only
                continue
            ratio = f["params"] / c["params"]
            gap = c["test_accuracy"] - f["test_accuracy"]
            if abs(ratio - 1) < 0.05:
                out.append(
                    f"At equal capacity ({f['params']:,} vs {c['params']:,} parameters) {f['label']} is "
                    f"{abs(gap) * 100:.1f} points {'less' if gap > 0 else 'more'} accurate than {c['label']}"
                    + (": the ConvNet's advantage comes from its architecture (local receptive fields and weight "
                       "sharing, which build in translation equivariance), not from having more weights."
                       if gap > 0 else ".")
                )
            elif ratio > 1.05:
                out.append(
                    f"{f['label']} has {ratio:.1f}x the parameters of {c['label']} yet is "
                    f"{abs(gap) * 100:.1f} points {'less' if gap > 0 else 'more'} accurate."
                )
            conv_act = c["summary"]["totals"]["activations"]
            fc_act = f["summary"]["totals"]["activations"]
            if ck == next(iter(convs)) and fk == next(iter(fcs)):
                out.append(f"Per image, {c['label']} computes {conv_act:,} activations against {fc_act:,} for "
                           f"{f['label']}: convolution reuses each weight at every position "
                           f"({c['params']:,} weights for {conv_act:,} activations).")
    return out


def _attack_findings(results: dict, models: dict, failing: set) -> list[str]:
    """Accuracy under each attack at a small and a middle eps, and the eps that halves clean accuracy."""
    out: list[str] = []
    attacks = list(dict.fromkeys(r["attack_key"] for r in results["records"]))
    for a in attacks:
        rows = {k: [r for r in results["records"] if r["model"] == k and r["attack_key"] == a] for k in models}
        eps_values = sorted({r["eps"] for r in results["records"] if r["attack_key"] == a and r["eps"] > 0})
        if not eps_values:
            continue
        trusted = [k for k in models if k not in failing]
        if len(trusted) < 2:
            continue
        for e in (eps_values[0], eps_values[len(eps_values) // 2]) if len(eps_values) > 1 else eps_values:
            accs = sorted(((next(r["adversarial_accuracy"] for r in rows[k] if r["eps"] == e), k) for k in trusted),
                          reverse=True)
            (hi, hk), (lo, lk) = accs[0], accs[-1]
            middle = "".join(f", {models[k]['label']} {_pct(v)}" for v, k in accs[1:-1])
            out.append(f"{a.upper()} at eps={e:g}: {models[hk]['label']} keeps {_pct(hi)} accuracy{middle}, "
                       f"{models[lk]['label']} {_pct(lo)} ({(hi - lo) * 100:.1f} points between the most and "
                       "the least robust).")
        halves = {k: _eps50(rows[k]) for k in trusted}
        known = {k: v for k, v in halves.items() if v is not None}
        if known:
            most = max(known, key=known.get)
            never = [k for k in halves if halves[k] is None]
            if never:  # a model that never falls to half beats every model that does: the best of them
                most = max(never, key=lambda k: min(r["adversarial_accuracy"] for r in rows[k]))
            out.append(f"{a.upper()} halves the clean accuracy at eps "
                       + ", ".join(f"{v:.3f} for {models[k]['label']}" for k, v in sorted(known.items(),
                                                                                          key=lambda kv: -kv[1]))
                       + f"; the most robust under {a.upper()} is {models[most]['label']}."
                       + ("" if len(known) == len(halves) else " (Some models keep over half their accuracy "
                          "at every eps tried: " + ", ".join(models[k]['label'] for k in halves
                                                             if halves[k] is None) + ".)"))
    return out


def _fooling_findings(results: dict, models: dict) -> list[str]:
    """How many fooling-image targets each model reached, and how fast."""
    out: list[str] = []
    for k, m in models.items():
        if m["fooling"]:
            reached = [f for f in m["fooling"] if f["reached"]]
            steps = sorted(f["steps"] for f in reached)
            med = steps[len(steps) // 2] if steps else None
            out.append(f"Fooling images: {m['label']} labels pure noise-started images with at least "
                       f"{100 * results['spec']['fooling']['threshold']:g}% confidence for {len(reached)} of "
                       f"{len(m['fooling'])} targets" + (f", in a median of {med} gradient steps." if med else "."))
    return out

def locality_findings(models: dict, learned: dict) -> list[str]:
    """How local each model's first-layer units are: the share of input-gradient mass in the best small window.

    ``learned`` maps a model key to the numbers of :func:`robust.visualize.locality` for its first layer
    (``layer``, ``window``, ``units``, ``median``, ``min``, ``max``, ``even``), or to None for runs without them.
    """
    known = {k: v for k, v in learned.items() if v and k in models}
    if not known:
        return []
    parts = []
    for k, v in known.items():
        spread = f", range {_pct(v['min'])}-{_pct(v['max'])}" if _pct(v["min"]) != _pct(v["max"]) else ""
        parts.append(f"{models[k]['label']} ({v['layer']}, {v['units']} units{spread}) a median "
                     f"{_pct(v['median'])}")
    first = next(iter(known.values()))
    w = first["window"]
    text = (f"First-layer locality: the share of a unit's input-gradient mass (its weights, for a first layer) "
            f"inside its most active {w}x{w} window is " + "; ".join(parts) + ".")
    if first.get("even"):
        text += f" A unit spreading evenly over the image would keep {_pct(first['even'])}."
    out = [text]
    convs = [k for k in known if models[k]["kind"] == "conv"]
    fcs = [k for k in known if models[k]["kind"] == "fc"]
    if convs and fcs:
        c, f = max(convs, key=lambda k: known[k]["median"]), max(fcs, key=lambda k: known[k]["median"])
        ratio = known[c]["median"] / max(known[f]["median"], 1e-12)
        out.append(f"{models[c]['label']}'s first-layer units are {ratio:.0f}x more concentrated than those of "
                   f"{models[f]['label']} ({_pct(known[c]['median'])} against {_pct(known[f]['median'])} in one "
                   f"{w}x{w} window): a convolution is local by construction, while a fully connected unit "
                   "spreads its weights over the whole image and must learn any locality from data.")
    return out


# ------------------------------------------------------------------ adversarial training (issue 8)

def _threat(m: dict) -> tuple | None:
    """What a model was trained against: (method, norm, eps), or None for standard training."""
    adv = m.get("adversarial")
    return (adv["method"], adv["norm"], adv["eps"]) if adv else None


def _worst(results: dict, key: str, eps: float) -> tuple[float, str, int] | None:
    """The lowest accuracy any attack left ``key`` at ``eps``: (accuracy, attack, images), or None."""
    rows = [r for r in results["records"] if r["model"] == key and abs(r["eps"] - eps) < 1e-9]
    if not rows:
        return None
    worst = min(rows, key=lambda r: r["adversarial_accuracy"])
    return worst["adversarial_accuracy"], worst["attack_key"], worst["n"]


def _noise(a: float, b: float, n: int) -> float:
    """Two binomial standard errors of the difference of two accuracies measured on ``n`` images each."""
    return 2 * ((a * (1 - a) + b * (1 - b)) / max(n, 1)) ** 0.5


def _standard_twin(models: dict, m: dict) -> str | None:
    """The key of the model with the same architecture and options, trained without adversarial examples."""
    return next((k for k, o in models.items() if not o.get("adversarial") and o["name"] == m["name"]
                 and (o.get("options") or {}) == (m.get("options") or {}) and not o.get("ref")), None)


def adversarial_findings(results: dict, failing: set = frozenset()) -> list[str]:
    """What adversarial training bought and cost, and whether the ConvNet's advantage survives it.

    Per adversarially trained model: clean accuracy and training time against its standard twin (same
    architecture), and the worst accuracy under attack at its training eps. Per training eps: the best
    adversarially trained ConvNet against the best adversarially trained fully connected network, with
    the gap judged against two binomial standard errors.
    """
    models, out = results["models"], []
    robust = {k: m for k, m in models.items() if m.get("adversarial") and k not in failing}
    for k, m in robust.items():
        adv, twin = m["adversarial"], _standard_twin(models, m)
        at = _worst(results, k, adv["eps"])
        text = f"{m['label']} ({adv['method']}, eps {adv['eps']:g}): "
        if at:
            text += f"{_pct(at[0])} under the strongest attack at eps {adv['eps']:g} ({at[1]}, {at[2]} images)"
        if twin is not None:
            t = models[twin]
            before = _worst(results, twin, adv["eps"])
            cost = t["test_accuracy"] - m["test_accuracy"]
            text += (f" against {_pct(before[0])} for {t['label']}" if before and at else "")
            text += (f"; robustness costs {abs(cost) * 100:.1f} points of clean accuracy "
                     f"({_pct(m['test_accuracy'])} against {_pct(t['test_accuracy'])})" if cost >= 0 else
                     f"; clean accuracy {_pct(m['test_accuracy'])}, {abs(cost) * 100:.1f} points above the standard "
                     f"model's {_pct(t['test_accuracy'])}")
            text += _time_cost(m, t)
        out.append(text + ".")
    out += _advantage_findings(results, robust, failing)
    return out


def _time_cost(m: dict, t: dict) -> str:
    """Training time of an adversarially trained model against its standard twin, total and per epoch."""
    if not (m.get("train_seconds") and t.get("train_seconds") and t.get("epochs")):
        return ""
    # Per epoch: the card's ratio to a standard epoch timed in the same process (the first epoch traces;
    # on shared cores this is steadier than comparing with the twin, trained at another time).
    ratios = sorted(e["ratio_to_standard"] for e in (m["adversarial"].get("epochs") or [])[1:]
                    if e.get("ratio_to_standard"))
    per_epoch = (f"; an epoch takes {statistics.median(ratios):.1f}x a standard epoch of the same network, median of "
                 f"{len(ratios)} epochs" if ratios else "")
    return (f", and {m['train_seconds'] / t['train_seconds']:.1f}x the training time ({m['train_seconds']:.0f} s "
            f"for {m['epochs']} epochs against {t['train_seconds']:.0f} s for {t['epochs']}{per_epoch})")


def _advantage_findings(results: dict, robust: dict, failing: set) -> list[str]:
    """Per training eps: does the ConvNet stay ahead of the fully connected network after adversarial training?"""
    models, out = results["models"], []
    for eps in sorted({m["adversarial"]["eps"] for m in robust.values()}):
        def best(kind, pool):
            scored = [(_worst(results, k, eps), k) for k, m in pool.items() if m["kind"] == kind]
            scored = [(w[0], k, w[2]) for w, k in scored if w]
            return max(scored) if scored else None

        trained = {k: m for k, m in robust.items() if m["adversarial"]["eps"] == eps}
        conv, fc = best("conv", trained), best("fc", trained)
        if not (conv and fc):
            continue
        gap, noise = conv[0] - fc[0], _noise(conv[0], fc[0], min(conv[2], fc[2]))
        standard = {k: m for k, m in models.items() if not m.get("adversarial") and k not in failing}
        s_conv, s_fc = best("conv", standard), best("fc", standard)
        before = (f" Trained without adversarial examples, the best ConvNet keeps {_pct(s_conv[0])} and the best "
                  f"fully connected network {_pct(s_fc[0])} at this eps." if s_conv and s_fc else "")
        verdict = ("survives adversarial training" if gap > noise else
                   "does not survive adversarial training: the fully connected network is ahead" if gap < -noise
                   else "is within measurement noise after adversarial training")
        c, f = models[conv[1]], models[fc[1]]
        out.append(f"At eps {eps:g}, adversarially trained: {c['label']} ({c['params']:,} parameters) keeps "
                   f"{_pct(conv[0])} and {f['label']} ({f['params']:,}) {_pct(fc[0])} under the strongest attack "
                   f"(the lowest accuracy any attack left), a gap of "
                   f"{gap * 100:+.1f} points (noise: +-{noise * 100:.1f}), so the ConvNet's advantage "
                   f"{verdict}.{before}")
    return out
