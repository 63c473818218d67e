"""Threat models: the norm ball an attack may move an image in, as small strategy objects.

A norm knows four things an attack needs and nothing else: the steepest
ascent direction of a gradient under that norm (:meth:`Norm.normalize`), the
projection back onto the ball (:meth:`Norm.project`), a random point in the
ball (:meth:`Norm.random_start`) or on its surface (:meth:`Norm.random_surface`)
and the size of a perturbation (:meth:`Norm.distance`). FGSM, PGD and any future attack take a norm instead of
branching on ``norm == ...`` (the design of Foolbox 3's ``LPDistance``
subclasses). Everything is written with ``keras.ops`` so it runs inside the
compiled attack loop on any Keras backend.
"""

from __future__ import annotations

import math
from typing import Any, Protocol

from keras import ops

from robust.errors import RobustError, known_names

_TINY = 1e-12


class RandomSource(Protocol):
    """What :meth:`Norm.random_start` needs from a random-number source (see ``robust.backend.Rng``)."""

    def uniform(self, shape, minval: float | Any = 0.0, maxval: float | Any = 1.0): ...

    def normal(self, shape): ...


def _flat_axes(x) -> list[int]:
    return list(range(1, len(x.shape)))


class Norm:
    """Base of the norm strategies. Subclasses are stateless; compare them by :attr:`name`."""

    name: str = ""
    label: str = ""  # human label used in tables, e.g. "L-inf"

    def normalize(self, grad):
        """The unit-norm direction of steepest ascent for ``grad`` (per example)."""
        raise NotImplementedError

    def project(self, delta, eps):
        """``delta`` moved onto the ball of radius ``eps`` (per example), unchanged when inside."""
        raise NotImplementedError

    def random_start(self, like, eps, rng: RandomSource):
        """A random perturbation shaped like the batch ``like``, inside the ball of radius ``eps``."""
        raise NotImplementedError

    def random_surface(self, like, eps, rng: RandomSource):
        """A random perturbation shaped like the batch ``like`` on the sphere of radius ``eps`` (APGD's start)."""
        raise NotImplementedError

    def distance(self, delta):
        """The size of each perturbation in ``delta``: a vector of ``len(delta)`` norms."""
        raise NotImplementedError

    def rescale(self, delta, radius):
        """``delta`` scaled, per example, to size ``radius`` in this norm (a zero perturbation stays zero)."""
        size = ops.reshape(self.distance(delta), (-1,) + (1,) * (len(delta.shape) - 1))
        return delta * (radius / ops.maximum(size, _TINY))

    def largest(self, image_shape: tuple[int, ...], low: float, high: float) -> float:
        """The largest distance two images of ``image_shape`` in ``[low, high]`` can be apart."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Norm) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class LinfNorm(Norm):
    """The L-infinity ball: every pixel moves by at most ``eps`` (FGSM, Madry et al.'s PGD)."""

    name = "inf"
    label = "L-inf"

    def normalize(self, grad):
        return ops.sign(grad)

    def project(self, delta, eps):
        return ops.clip(delta, -eps, eps)

    def random_start(self, like, eps, rng: RandomSource):
        return rng.uniform(ops.shape(like), -eps, eps)

    def random_surface(self, like, eps, rng: RandomSource):
        # As the APGD reference: uniform in the cube, then scaled so the largest pixel change is eps.
        return self.rescale(rng.uniform(ops.shape(like), -1.0, 1.0), eps)

    def distance(self, delta):
        return ops.max(ops.abs(delta), axis=_flat_axes(delta))

    def largest(self, image_shape, low, high):
        return float(high - low)


class L2Norm(Norm):
    """The L2 ball: the Euclidean length of the whole perturbation is at most ``eps``."""

    name = "2"
    label = "L2"

    def _length(self, x):
        return ops.sqrt(ops.sum(ops.square(x), axis=_flat_axes(x), keepdims=True))

    def normalize(self, grad):
        # A zero gradient stays zero rather than becoming NaN.
        length = self._length(grad)
        return ops.where(length > 0, grad / ops.maximum(length, _TINY), ops.zeros_like(grad))

    def project(self, delta, eps):
        length = self._length(delta)
        return delta * ops.minimum(1.0, eps / ops.maximum(length, _TINY))

    def random_start(self, like, eps, rng: RandomSource):
        # Uniform in the ball: a uniform direction times a radius distributed as u^(1/d).
        shape = ops.shape(like)
        direction = self.normalize(rng.normal(shape))
        dims = math.prod(int(d) for d in like.shape[1:])
        radius = eps * ops.power(rng.uniform((shape[0],) + (1,) * (len(shape) - 1)), 1.0 / dims)
        return direction * radius

    def random_surface(self, like, eps, rng: RandomSource):
        # A Gaussian direction is uniform on the sphere.
        return self.rescale(rng.normal(ops.shape(like)), eps)

    def distance(self, delta):
        return ops.sqrt(ops.sum(ops.square(delta), axis=_flat_axes(delta)))

    def largest(self, image_shape, low, high):
        return float(high - low) * math.sqrt(math.prod(int(d) for d in image_shape))


class L1Norm(Norm):
    """The L1 ball: the summed absolute change of all pixels is at most ``eps`` (sparse perturbations)."""

    name = "1"
    label = "L1"

    def normalize(self, grad):
        # Steepest ascent under L1 moves the single pixel with the largest gradient (ties: the first).
        d = math.prod(int(v) for v in grad.shape[1:])
        flat = ops.reshape(grad, (ops.shape(grad)[0], d))
        top = ops.one_hot(ops.argmax(ops.abs(flat), axis=-1), d)
        return ops.reshape(top * ops.sign(flat), ops.shape(grad))

    def project(self, delta, eps):
        """The Euclidean projection onto the L1 ball (Duchi, Shalev-Shwartz, Singer, Chandra 2008), per example."""
        n, d = ops.shape(delta)[0], math.prod(int(v) for v in delta.shape[1:])
        flat = ops.reshape(delta, (n, d))
        eps = ops.reshape(eps * ops.ones((n,)), (n, 1))
        size = ops.abs(flat)
        mu = ops.flip(ops.sort(size, axis=-1), axis=-1)
        cumsum = ops.cumsum(mu, axis=-1)
        rank = ops.cast(ops.arange(1, d + 1), flat.dtype)
        rho = ops.max(ops.where(mu * rank > cumsum - eps, rank, 0.0), axis=-1, keepdims=True) - 1.0
        rho = ops.maximum(rho, 0.0)
        theta = (ops.take_along_axis(cumsum, ops.cast(rho, "int32"), axis=-1) - eps) / (rho + 1.0)
        shrunk = ops.maximum(size - theta, 0.0) * ops.sign(flat)
        inside = ops.sum(size, axis=-1, keepdims=True) <= eps
        return ops.reshape(ops.where(inside, flat, shrunk), ops.shape(delta))

    def random_start(self, like, eps, rng: RandomSource):
        raise RobustError("No attack of robust starts at a random point of the L1 ball; FMN starts at the image.")

    def random_surface(self, like, eps, rng: RandomSource):
        raise RobustError("No attack of robust starts on the L1 sphere; FMN starts at the image.")

    def distance(self, delta):
        return ops.sum(ops.abs(delta), axis=_flat_axes(delta))

    def largest(self, image_shape, low, high):
        return float(high - low) * math.prod(int(d) for d in image_shape)


NORMS: dict[str, type[Norm]] = {"inf": LinfNorm, "2": L2Norm, "1": L1Norm}
_ALIASES = {"inf": "inf", "linf": "inf", "l-inf": "inf", "np.inf": "inf", "infinity": "inf",
            "2": "2", "l2": "2", "2.0": "2", "1": "1", "l1": "1", "1.0": "1"}


def get_norm(norm: str | float | Norm) -> Norm:
    """The norm strategy for ``"inf"`` / ``"2"`` / ``"1"`` (also ``float("inf")``, ``2``, ``"linf"``, ``"l2"``,
    ``"l1"``, or a Norm). Which norms an attack supports is its :attr:`~robust.attacks.Attack.norms`."""
    if isinstance(norm, Norm):
        return norm
    key = str(norm).strip().lower()
    if key in _ALIASES:
        return NORMS[_ALIASES[key]]()
    raise RobustError(
        f"Unknown norm {norm!r}. Known norms: {known_names(NORMS)} (L-infinity, L2 and L1); "
        "pass norm='inf', norm='2' or norm='1' (on the command line --norm inf, --norm 2 or --norm 1)."
    )
