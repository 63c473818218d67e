"""Adversarial attacks on Keras classifiers: FGSM, PGD, APGD, APGD-T, Square, AutoAttack, the minimum-norm
attacks DeepFool, FMN and Carlini-Wagner L2, and fooling images.

Attacks are small objects: hyper-parameters in the constructor, model and
data at call time, numpy in and out::

    from robust.attacks import PGD
    result = PGD(eps=0.1, steps=40)(model, x_test, y_test)

Norm-bounded attacks are registered, built-ins and plugins alike, through
the entry-point group ``robust.attacks``; an entry point names a subclass of
:class:`Attack`. :func:`get_attack` builds one by name.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import warnings
from typing import Any

from robust.attacks.apgd import APGD, APGDT
from robust.attacks.auto import AutoAttack
from robust.attacks.base import Attack, AttackResult, Context
from robust.attacks.fgsm import FGSM
from robust.attacks.fooling import FoolingImages, FoolingResult
from robust.attacks.minimum_norm import FMN, CarliniWagnerL2, DeepFool, MinimumNormAttack
from robust.attacks.norms import L2Norm, LinfNorm, Norm, get_norm
from robust.attacks.pgd import PGD
from robust.attacks.square import Square
from robust.attacks.steps import StepAttack
from robust.errors import RobustError, known_names
from robust.models.registry import entry_point_source

ENTRY_POINT_GROUP = "robust.attacks"

__all__ = ["Attack", "StepAttack", "Context", "AttackResult", "FGSM", "PGD", "APGD", "APGDT", "Square", "AutoAttack", "DeepFool", "FMN",
           "CarliniWagnerL2", "MinimumNormAttack", "FoolingImages", "FoolingResult",
           "Norm", "LinfNorm", "L2Norm", "get_norm", "get_attack", "attack_registry", "attack_source", "strongest"]


# Why each skipped plugin was skipped, filled in by _entries(), so asking for one by name explains itself.
_SKIPPED: dict[str, str] = {}


@functools.cache
def _entries() -> dict[str, tuple[type[Attack], str]]:
    found: dict[str, tuple[type[Attack], str]] = {}
    _SKIPPED.clear()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        source = entry_point_source(ep)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the others
            _SKIPPED[ep.name] = f"attack plugin {ep.name!r} from {source} failed to import and is skipped: {exc}"
            warnings.warn(_SKIPPED[ep.name])
            continue
        if not (inspect.isclass(obj) and issubclass(obj, Attack)):
            _SKIPPED[ep.name] = (f"attack plugin {ep.name!r} from {source} is skipped: the entry point must name a "
                                 f"subclass of robust.attacks.Attack; received {obj!r}.")
            warnings.warn(_SKIPPED[ep.name])
            continue
        found[ep.name] = (obj, source)
    return found


def attack_registry() -> dict[str, type[Attack]]:
    """All registered attacks by name (``"fgsm"``, ``"pgd"``, and plugins)."""
    return {name: cls for name, (cls, _) in _entries().items()}


def attack_source(name: str) -> str:
    """Where attack ``name`` was registered: ``"built-in"`` or the plugin's distribution."""
    return _entries()[name][1]


def get_attack(name: str, **params: Any) -> Attack:
    """Build the registered attack ``name`` with ``params``.

    Raises:
        RobustError: unknown name (the known ones are listed) or a parameter the attack does not take.

    Example:
        >>> get_attack("pgd", eps=0.1, steps=20)
        PGD(eps=0.1, norm='inf', steps=20, ...)
    """
    registry = attack_registry()
    key = str(name).strip().lower()
    if key not in registry and key in _SKIPPED:
        raise RobustError(f"Attack {name!r} cannot be used: {_SKIPPED[key]} Known attacks: {known_names(registry)}.")
    if key not in registry:
        raise RobustError(f"Unknown attack {name!r}. Known attacks: {known_names(registry)}. "
                          "Run `robust attacks` to see their parameters.")
    cls = registry[key]
    accepted = cls.parameters()
    unknown = set(params) - set(accepted)
    if unknown:
        raise RobustError(
            f"Attack {key!r} has no parameter {known_names(unknown)}. Its parameters are: "
            + ", ".join(f"{k}={'(required)' if v is inspect.Parameter.empty else repr(v)}" for k, v in accepted.items())
            + "."
        )
    return cls(**params)


def strongest(names) -> int:
    """The position of the strongest attack among registered ``names``, as the attacks declare it.

    Each attack class states its :attr:`Attack.strength`; the highest wins,
    the last one among ties (a spec's later, usually heavier, entry).
    """
    registry = attack_registry()
    ranks = [getattr(registry.get(str(n).strip().lower()), "strength", 0) for n in names]
    if not ranks:
        raise RobustError("strongest: no attacks given.")
    best = max(ranks)
    return max(i for i, r in enumerate(ranks) if r == best)
