"""Adversarial training: the threat model to train against, the attack run inside the train step, the guard.

Three methods, all run through the same attack code as ``robust attack``
(:meth:`robust.attacks.PGD.perturb`, the step API run as one loop), compiled into the train step together
with the weight update (:func:`robust.backend.adversarial_model`):

* ``pgd``: Madry, Makelov, Schmidt, Tsipras, Vladu 2018, "Towards deep
  learning models resistant to adversarial attacks": every batch is replaced
  by its PGD-K examples from a uniform random start (the last iterate).
* ``fgsm-rs``: Wong, Rice, Kolter 2020, "Fast is better than free": one
  signed-gradient step of 1.25 x eps from a uniform random start.
* ``trades``: Zhang, Yu, Jiao, Xing, El Ghaoui, Jordan 2019, "Theoretically
  principled trade-off between robustness and accuracy": clean cross-entropy
  + beta x KL(clean || adversarial), the KL maximised by PGD (here from a
  uniform random start in the ball rather than the paper's 0.001 x normal).

Every epoch, :class:`RobustValidation` measures PGD-10 and FGSM accuracy on a
fixed, seeded slice of the validation split; the model keeps the epoch with
the best PGD accuracy (:func:`best_epoch`) and training stops when
:func:`overfitting` sees catastrophic overfitting (Wong et al. 2020): PGD
accuracy collapses while FGSM accuracy stays high.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from typing import Callable

import keras
import numpy as np
from keras import ops

from robust import backend
from robust.attacks.base import Context
from robust.attacks.fgsm import FGSM
from robust.attacks.norms import get_norm
from robust.attacks.pgd import PGD
from robust.errors import RobustError, known_names
from robust.gradients import Logits, kl_divergence

METHODS = ("pgd", "fgsm-rs", "trades")
DEFAULT_STEPS = {"pgd": 10, "fgsm-rs": 1, "trades": 10}
DEFAULT_BETA = 6.0  # Zhang et al.'s 1/lambda for MNIST and CIFAR-10
VALIDATION_IMAGES = 500
VALIDATION_PGD_STEPS = 10


@dataclasses.dataclass(frozen=True)
class AdversarialConfig:
    """The threat model a model is trained against (``robust train --adversarial``).

    Args:
        method: ``"pgd"``, ``"fgsm-rs"`` or ``"trades"``.
        eps: radius of the norm ball, in the units of the value range (0.3 for MNIST in [0, 1]).
        steps: attack steps per batch; default 10 for ``pgd`` and ``trades``; ``fgsm-rs`` takes 1.
        step_size: size of each step; default ``2.5 * eps / steps`` (``1.25 * eps`` for ``fgsm-rs``).
        beta: weight of the KL term (``trades`` only; default 6).
        norm: ``"inf"`` or ``"2"``.
        warmup: epochs over which eps (and the step size) ramp linearly from 0, step by step.

    Raises:
        RobustError: an unknown method or norm, eps not above 0, steps below 1, a negative
            beta (or beta for another method), a negative warmup.
    """

    method: str
    eps: float
    steps: int | None = None
    step_size: float | None = None
    beta: float | None = None
    norm: str = "inf"
    warmup: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise RobustError(f"Unknown adversarial training method {self.method!r}. Known methods: "
                              f"{known_names(METHODS)} (Madry et al.'s PGD, Wong et al.'s FGSM from a random "
                              "start, Zhang et al.'s TRADES).")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen dataclass)
        set_("eps", _number("eps", self.eps, positive=True))
        set_("norm", get_norm(self.norm).name)
        if self.norm not in PGD.norms:
            raise RobustError(f"Adversarial training runs PGD in L-inf or L2 (--adv-norm inf or 2); received norm "
                              f"{self.norm!r}.")
        steps = DEFAULT_STEPS[self.method] if self.steps is None else _number("steps", self.steps, integer=True)
        if steps < 1:
            raise RobustError(f"steps (--adv-steps) must be at least 1; received {steps}.")
        if self.method == "fgsm-rs" and steps != 1:
            raise RobustError(f"fgsm-rs takes exactly one step (Wong et al. 2020); received steps={steps}. "
                              "Use --adversarial pgd for several steps.")
        set_("steps", steps)
        if self.step_size is not None:
            set_("step_size", _number("step_size", self.step_size, positive=True))
        if self.beta is not None and self.method != "trades":
            raise RobustError(f"beta (--adv-beta) weighs TRADES's KL term and applies to --adversarial trades "
                              f"only; received beta={self.beta!r} with method {self.method!r}.")
        if self.method == "trades":
            beta = DEFAULT_BETA if self.beta is None else _number("beta", self.beta)
            if beta < 0:
                raise RobustError(f"beta (--adv-beta) must be 0 or more (6 in Zhang et al. 2019); received {beta}.")
            set_("beta", beta)
        warmup = _number("warmup", self.warmup, integer=True)
        if warmup < 0:
            raise RobustError(f"warmup (--adv-warmup) must be 0 or more epochs; received {warmup}.")
        set_("warmup", warmup)

    @property
    def effective_step_size(self) -> float:
        if self.step_size is not None:
            return self.step_size
        return 1.25 * self.eps if self.method == "fgsm-rs" else 2.5 * self.eps / self.steps

    def check_for(self, image_shape, value_range, epochs: int) -> None:
        """Refuse an eps larger than any distance between two images, or a warmup as long as training."""
        low, high = (float(v) for v in value_range)
        largest = get_norm(self.norm).largest(tuple(image_shape), low, high)
        if self.eps > largest:
            raise RobustError(
                f"eps={self.eps:g} (--adv-eps) is larger than any {get_norm(self.norm).label} distance between "
                f"two images in [{low:g}, {high:g}] of shape {tuple(image_shape)} ({largest:g}). Use eps in the "
                "units of the value range, e.g. 0.3 for MNIST in [0, 1].")
        if self.warmup >= epochs:
            raise RobustError(f"warmup={self.warmup} (--adv-warmup) must be shorter than training "
                              f"({epochs} epochs): eps would never reach {self.eps:g}.")

    def describe(self) -> dict:
        """The threat model as written in the model card."""
        return {"method": self.method, "norm": self.norm, "eps": self.eps, "steps": self.steps,
                "step_size": self.effective_step_size, "beta": self.beta, "warmup_epochs": self.warmup}


def describe_training(card: dict | None) -> str:
    """One line saying how a model was trained, from its card: ``standard`` or its threat model."""
    adv = (card or {}).get("adversarial")
    if not adv:
        return "standard (not adversarially trained)" if card else "unknown (no model card)"
    extra = f", beta {adv['beta']:g}" if adv.get("beta") is not None else ""
    pgd = "unmeasurable" if adv["pgd_val_accuracy"] is None else f"{adv['pgd_val_accuracy']:.4f}"
    return (f"adversarial, {adv['method']} at {get_norm(adv['norm']).label} eps {adv['eps']:g} "
            f"({adv['steps']} step(s) of {adv['step_size']:.4g}{extra}); kept epoch {adv['best_epoch']} with "
            f"PGD-{adv['validation']['pgd_steps']} validation accuracy {pgd}")


def _number(name, value, *, integer=False, positive=False):
    """A training setting checked as every attack hyper-parameter is, named with its flag."""
    from robust.attacks.base import check_number

    return check_number(f"{name} (--adv-{name.replace('_', '-')})", value, integer=integer, positive=positive)


# ------------------------------------------------------------ inside the step

class _LastIterate(PGD):
    """PGD that returns its last iterate, as adversarial training uses it (no search over iterates)."""

    keep_best = False


class _KLAscent(_LastIterate):
    """PGD ascending KL(clean || adversarial) instead of a label's loss (TRADES's inner maximisation)."""

    def _objective(self, z, reference):
        return kl_divergence(reference, z)

    def perturb(self, ctx):
        return super().perturb(ctx._replace(goal=ops.stop_gradient(ctx.logits(ctx.x))))


def training_attack(config: AdversarialConfig, seed: int = 0) -> PGD:
    """The attack object whose :meth:`~robust.attacks.steps.StepAttack.perturb` runs inside the train step."""
    kind = _KLAscent if config.method == "trades" else _LastIterate
    return kind(eps=config.eps, norm=config.norm, steps=config.steps, step_size=config.effective_step_size,
                random_start=True, seed=seed)


def make_perturb(config: AdversarialConfig, model, num_classes: int, value_range, *, warmup_steps: int,
                 seed: int) -> Callable:
    """``perturb(x, y, step) -> x_adv`` for the train step, on the model's current weights.

    Random starts come from per-image streams keyed by ``(seed, position in the batch)`` and
    folded with the optimizer step, so every batch of every epoch gets fresh ones. During the
    ``warmup_steps`` first steps eps and the step size grow linearly to their full values.
    """
    attack = training_attack(config, seed)
    logits = Logits(lambda t: model(t, training=False), "logits", num_classes, model.variables)
    low, high = (float(v) for v in value_range)

    def perturb(x, y, step):
        ramp = ops.minimum(1.0, ops.cast(step + 1, "float32") / float(warmup_steps)) if warmup_steps else 1.0
        batch = ops.shape(x)[0]
        keys = ops.stack([ops.full((batch,), seed % (2**31 - 1), "int32"), ops.arange(batch, dtype="int32")], axis=1)
        ctx = Context(logits, x, ops.cast(y, "int32"), backend.Rng(keys).fold(step), config.eps * ramp,
                      config.effective_step_size * ramp, low, high)
        return attack.perturb(ctx)

    return perturb


def wrap_for_training(model, config: AdversarialConfig, num_classes: int, value_range, *, steps_per_epoch: int,
                      seed: int):
    """The model to compile and fit: its train step attacks every batch first."""
    perturb = make_perturb(config, model, num_classes, value_range, warmup_steps=config.warmup * steps_per_epoch,
                           seed=seed)
    return backend.adversarial_model(model, perturb, config.beta if config.method == "trades" else None)


# ------------------------------------------------------- the guard and the choice

def best_epoch(history: dict[str, list[float]]) -> int:
    """The epoch (0-based) with the best PGD validation accuracy; ties go to higher clean accuracy, then earlier.

    An epoch whose PGD accuracy could not be measured (NaN: no usable input gradient) never beats a measured one.
    """
    pgd, clean = history["pgd"], history["clean"]
    if not pgd:
        raise RobustError("best_epoch needs at least one recorded epoch; the history is empty.")
    return max(range(len(pgd)), key=lambda e: (-1.0 if math.isnan(pgd[e]) else pgd[e], clean[e], -e))


def overfitting(history: dict[str, list[float]], *, drop: float = 0.2, gap: float = 0.3) -> str | None:
    """A warning when the last epoch shows catastrophic overfitting (Wong et al. 2020), else ``None``.

    The signature: PGD accuracy fell by at least ``drop`` below its best earlier
    epoch, while FGSM accuracy stays at least ``gap`` above it (the model learnt
    to defeat the single step, not the attack).
    """
    pgd, fgsm = history["pgd"], history["fgsm"]
    if len(pgd) < 2:
        return None
    best = max(pgd[:-1])
    if best - pgd[-1] >= drop and fgsm[-1] - pgd[-1] >= gap:
        return (f"catastrophic overfitting at epoch {len(pgd)}: PGD validation accuracy fell from {best:.3f} "
                f"to {pgd[-1]:.3f} while FGSM accuracy is {fgsm[-1]:.3f}. Training stops and keeps epoch "
                f"{best_epoch(history) + 1}. Use a smaller step size, an eps warmup (--adv-warmup) or "
                "--adversarial pgd.")
    return None


class RobustValidation(keras.callbacks.Callback):
    """Per epoch: PGD-10 and FGSM accuracy on a fixed validation slice; keeps the best-PGD weights; the guard.

    Exposes ``epoch``, ``accuracy`` (clean validation accuracy of the kept epoch) and ``weights``
    like :class:`robust.training.KeepBest`, plus ``history`` and ``stopped`` (the guard's warning).
    """

    def __init__(self, model, config: AdversarialConfig, x, y, value_range, *, seed: int,
                 log: Callable[[str], None] | None = None):
        super().__init__()
        self.inner, self.x, self.y, self.value_range = model, x, y, tuple(value_range)
        self.attacks = {"pgd": PGD(eps=config.eps, norm=config.norm, steps=VALIDATION_PGD_STEPS, seed=seed),
                        "fgsm": FGSM(eps=config.eps, norm=config.norm)}
        self.log = log or (lambda line: None)
        self.history: dict[str, list[float]] = {"clean": [], "pgd": [], "fgsm": [], "seconds": []}
        self.epoch, self.accuracy, self.weights, self.stopped = -1, float("nan"), None, None

    def on_epoch_end(self, epoch, logs=None):
        started = time.perf_counter()
        self.history["clean"].append(float((logs or {}).get("val_accuracy", float("nan"))))
        collapsed = None
        for name, attack in self.attacks.items():
            try:
                result = attack(self.inner, self.x, self.y, value_range=self.value_range, progress=False)
                self.history[name].append(result.adversarial_accuracy)
            except RobustError as exc:  # no usable input gradient: the network collapsed, robustness unmeasurable
                self.history[name].append(float("nan"))
                collapsed = str(exc).split(". ")[0]
        self.history["seconds"].append(time.perf_counter() - started)
        if best_epoch(self.history) == epoch:
            self.epoch, self.accuracy, self.weights = epoch, self.history["clean"][-1], self.model.get_weights()
        self.log(f"epoch {epoch + 1}: validation clean {self.history['clean'][-1]:.4f}, "
                 f"PGD-{VALIDATION_PGD_STEPS} {self.history['pgd'][-1]:.4f}, FGSM {self.history['fgsm'][-1]:.4f} "
                 f"at eps {self.attacks['pgd'].eps:g} ({len(self.x)} images)")
        warning = overfitting(self.history)
        if collapsed:
            warning = (f"training collapsed at epoch {epoch + 1}: {collapsed}, so PGD accuracy cannot be measured "
                       f"(e.g. every ReLU died). Training stops and keeps epoch {self.epoch + 1}. Lower the "
                       "learning rate (--lr) or ramp eps up (--adv-warmup).")
        if warning:
            self.stopped = warning
            warnings.warn(warning, stacklevel=2)
            self.log(f"WARNING: {warning}")
            self.model.stop_training = True
