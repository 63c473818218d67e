"""The Square attack (Andriushchenko, Croce, Flammarion, Hein 2020): score-based, no gradients.

"Square Attack: a query-efficient black-box adversarial attack via random
search", ECCV 2020. The details follow the authors' reference implementation
(``fra31/auto-attack``, ``square.py``): the margin loss, the schedule that
halves the window fraction ``p`` over the iterations, the vertical-stripe
start for L-inf, and the L2 start and window moves built from the
``eta`` pattern of nested rectangles.

Because it reads only the model's outputs, a model that hides or breaks its
gradient (gradient masking, Athalye et al. 2018) cannot fool it: when Square
beats the gradient attacks, their numbers are not to be trusted.
"""

from __future__ import annotations

import math

import numpy as np
from keras import ops

from robust import backend
from robust.attacks.base import Attack, Context, check_number
from robust.attacks.norms import L2Norm, Norm
from robust.errors import RobustError, known_names
from robust.gradients import objective

# Iteration thresholds, in ten-thousandths of the budget, after which p is halved once more.
_HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(i: int, queries: int, p_init: float = 0.8) -> float:
    """The fraction ``p`` of the image a window covers at iteration ``i`` of ``queries``.

    ``p_init`` halved at 0.1%, 0.5%, 2%, 5%, 10%, 20%, 40%, 60% and 80% of the
    budget (the reference's schedule for 10,000 queries, rescaled to ``queries``).

    Example:
        >>> [square_fraction(i, 100) for i in (0, 1, 3, 50, 99)]
        [0.8, 0.4, 0.2, 0.0125, 0.0015625]
    """
    return p_init / 2 ** _halvings(i, queries)


def _halvings(i: int, queries: int) -> int:
    at = int(i / queries * 10000)
    return sum(at > t for t in _HALVINGS)


def window_size(p: float, height: int, width: int, *, smallest: int = 1, odd: bool = False) -> int:
    """The side of a square window covering about ``p`` of a ``height x width`` image (at least ``smallest``)."""
    side = max(int(round(math.sqrt(p * height * width))), smallest)
    if odd and side % 2 == 0:
        side += 1
    return min(side, height, width)


def _rectangles(rows: int, cols: int) -> np.ndarray:
    """Nested rectangles around the centre, the k-th weighted 1 / (k + 1)^2, scaled to unit L2 norm."""
    out = np.zeros((rows, cols))
    if rows == 0 or cols == 0:
        return out
    rings = max(rows // 2 + 1, cols // 2 + 1)
    weights = np.cumsum((1.0 / np.arange(1, rings + 1) ** 2)[::-1])[::-1]  # weights[d] = sum_{k>=d} 1/(k+1)^2
    a, b = np.arange(rows)[:, None], np.arange(cols)[None, :]
    out = weights[np.maximum(np.abs(a - rows // 2), np.abs(b - cols // 2))]
    return out / np.sqrt(np.sum(out ** 2))


def eta(side: int) -> np.ndarray:
    """The L2 Square attack's window pattern: rectangles up top, minus rectangles below, unit L2 norm."""
    out = np.zeros((side, side))
    out[: side // 2] = _rectangles(side // 2, side)
    out[side // 2:] = -_rectangles(side - side // 2, side)
    return out / np.sqrt(np.sum(out ** 2))


def _random_sign(rng, shape):
    return ops.sign(rng.uniform(shape, -1.0, 1.0))


class _Windows:
    """Random square windows, one per image per draw, as masks over ``height x width``."""

    def __init__(self, height: int, width: int, sizes: list[int]):
        self.height, self.width = height, width
        self.sizes = backend.tensor(sizes, "int32")

    def place(self, rng, batch, side):
        """``(rows, cols, inside)``: each pixel's offset from a random window's corner and whether it is inside.

        Corners are uniform in ``[0, height - side) x [0, width - side)`` (0 when the window fills the image).
        """
        top = ops.cast(ops.floor(rng.uniform((batch,)) * ops.cast(self.height - side, "float32")), "int32")
        left = ops.cast(ops.floor(rng.uniform((batch,)) * ops.cast(self.width - side, "float32")), "int32")
        rows = ops.reshape(ops.arange(self.height, dtype="int32"), (1, -1, 1)) - ops.reshape(top, (-1, 1, 1))
        cols = ops.reshape(ops.arange(self.width, dtype="int32"), (1, 1, -1)) - ops.reshape(left, (-1, 1, 1))
        inside = ops.logical_and(ops.logical_and(rows >= 0, rows < side), ops.logical_and(cols >= 0, cols < side))
        return rows, cols, inside


class _LinfSquare:
    """L-inf moves: start on vertical stripes of +-eps; each step sets one window to x +- eps per channel."""

    smallest = 1

    def __init__(self, height: int, width: int, channels: int, fractions: list[float]):
        self.channels = channels
        self.windows = _Windows(height, width, [window_size(p, height, width) for p in fractions])

    def start(self, x, eps, rng, low, high):
        batch, width = ops.shape(x)[0], x.shape[2]
        return ops.clip(x + eps * _random_sign(rng, (batch, 1, width, self.channels)), low, high)

    def propose(self, x, best, eps, phase, rng, low, high):
        batch = ops.shape(x)[0]
        side = ops.take(self.windows.sizes, phase)
        _, _, inside = self.windows.place(rng, batch, side)
        moved = x + eps * _random_sign(rng, (batch, 1, 1, self.channels))
        return ops.where(inside[..., None], ops.clip(moved, low, high), best)


class _L2Square:
    """L2 moves: start on a grid of ``eta`` patterns; each step moves the mass of one window into another."""

    smallest = 5

    def __init__(self, height: int, width: int, channels: int, fractions: list[float]):
        self.height, self.width, self.channels = height, width, channels
        sizes = [window_size(p, height, width, smallest=3, odd=True) for p in fractions]
        self.windows = _Windows(height, width, sizes)
        big = max(sizes)
        etas = np.zeros((len(sizes), big, big), np.float32)
        for k, side in enumerate(sizes):
            etas[k, :side, :side] = eta(side)
        self.etas = backend.tensor(etas.reshape(len(sizes), -1))
        self.etas_t = backend.tensor(etas.transpose(0, 2, 1).reshape(len(sizes), -1))
        self.big = big
        self._grid()

    def _grid(self):
        """The start's layout: one ``eta`` (and its transpose) per cell of a grid of ``side = min(h, w) // 5``."""
        h, w = self.height, self.width
        side = min(h, w) // 5
        pattern, transposed = np.zeros((h, w), np.float32), np.zeros((h, w), np.float32)
        cell = np.full((h, w), -1)
        top = (h - 5 * side) // 2
        cells = 0
        for r in range(h // side):
            left = (w - 5 * side) // 2
            for _ in range(w // side):
                rs, cs = slice(top + r * side, top + (r + 1) * side), slice(left, left + side)
                n_r, n_c = len(range(h)[rs]), len(range(w)[cs])
                if n_r and n_c:
                    pattern[rs, cs] = eta(side)[:n_r, :n_c]
                    transposed[rs, cs] = eta(side).T[:n_r, :n_c]
                    cell[rs, cs] = cells
                    cells += 1
                left += side
        onehot = (cell.reshape(-1)[:, None] == np.arange(cells)[None, :]).astype(np.float32)
        self.cells = cells
        self.pattern, self.transposed = backend.tensor(pattern.reshape(-1)), backend.tensor(transposed.reshape(-1))
        self.onehot = backend.tensor(onehot)

    def start(self, x, eps, rng, low, high):
        batch = ops.shape(x)[0]
        signs = _random_sign(rng, (batch, self.cells, self.channels))
        flip = ops.cast(rng.uniform((batch, self.cells)) < 0.5, "float32")
        per_pixel_sign = ops.einsum("pn,bnc->bpc", self.onehot, signs)
        per_pixel_flip = ops.matmul(flip, ops.transpose(self.onehot))
        shape = per_pixel_flip * (self.transposed - self.pattern) + self.pattern
        delta = ops.reshape(shape[..., None] * per_pixel_sign, (-1, self.height, self.width, self.channels))
        return ops.clip(x + _L2.rescale(delta, eps), low, high)

    def propose(self, x, best, eps, phase, rng, low, high):
        batch = ops.shape(x)[0]
        side = ops.take(self.windows.sizes, phase)
        rows, cols, inside = self.windows.place(rng, batch, side)
        _, _, other = self.windows.place(rng, batch, side)
        index = ops.clip(rows, 0, self.big - 1) * self.big + ops.clip(cols, 0, self.big - 1)
        flip = (rng.uniform((batch, 1, 1)) < 0.5)
        shape = ops.where(flip, ops.take(ops.take(self.etas_t, phase, axis=0), index),
                          ops.take(ops.take(self.etas, phase, axis=0), index))
        first = ops.cast(inside[..., None], "float32")
        both = ops.maximum(first, ops.cast(other[..., None], "float32"))
        delta = best - x

        def length(v, axes=(1, 2, 3)):
            return ops.sqrt(ops.sum(ops.square(v), axis=axes, keepdims=True))

        old = delta * first / (1e-12 + length(delta * first, (1, 2)))
        new = shape[..., None] * first * _random_sign(rng, (batch, 1, 1, self.channels)) + old
        room = ops.maximum(eps ** 2 - length(delta) ** 2, 0.0) / self.channels + length(delta * both) ** 2
        new = new / (1e-12 + length(new, (1, 2))) * ops.sqrt(room)
        delta = delta * (1.0 - both) + new
        return ops.clip(x + _L2.rescale(delta, eps), low, high)


_L2 = L2Norm()
#: Square's moves per norm: each norm's geometry needs its own start and window update.
_MOVES = {"inf": _LinfSquare, "2": _L2Square}


class Square(Attack):
    """Square attack (Andriushchenko et al. 2020): random search on the margin, using model outputs only.

    Starts at vertical stripes of +-eps (L-inf) or a grid of square patterns
    of L2 size eps (L2). Each iteration proposes a change inside one random
    square window (L-inf: the window set to x +- eps, one sign per channel;
    L2: the window's perturbation replaced by a fresh pattern, taking the
    mass of a second window) and keeps it when the margin
    ``z_label - max_other z`` (targeted: ``max_other z - z_target``) drops.
    The window covers a fraction ``p`` of the image, ``p_init`` halved at
    fixed points of the budget (:func:`square_fraction`). An image stops once
    misclassified (at the target, if targeted), and the whole batch stops
    when all are. Images the model already gets wrong are returned unchanged.

    It never asks for a gradient, so it works on models without one
    (``needs_gradients = False``) and is not fooled by masked gradients.

    Distance measure: L-inf (``norm="inf"``) or L2 (``norm="2"``). Images must
    be ``(height, width, channels)``; L2 needs at least 5 x 5 pixels.

    Args:
        eps: radius of the ball, in the units of the value range.
        norm: ``"inf"`` or ``"2"``.
        queries: iterations, one model query per image each, after one query for the start
            and one for the clean image (default 5,000, as in AutoAttack).
        p_init: fraction of the image the first windows cover (default 0.8 as in the paper for
            L-inf; the paper tunes 0.1 for L2).
        restarts: runs from new random starts for the images still standing (default 1).
        targeted: move towards the ``target`` class given at call time.
        seed: seed of the random search.

    Example:
        >>> result = Square(eps=0.3, queries=1000)(model, x_test, y_test)
        >>> result.adversarial_accuracy
    """

    name = "square"
    needs_gradients = False

    def __init__(self, *, eps: float = 0.3, norm: str | Norm = "inf", queries: int = 5000, p_init: float = 0.8,
                 restarts: int = 1, targeted: bool = False, seed: int = 0):
        super().__init__(eps=eps, norm=norm, targeted=targeted, seed=seed)
        self.queries = check_number("queries", queries, integer=True, minimum=1)
        self.p_init = check_number("p_init", p_init, positive=True)
        if self.p_init > 1:
            raise RobustError(f"p_init is the fraction of the image the first windows cover, in (0, 1]; "
                              f"received {p_init!r}.")
        self.restarts = check_number("restarts", restarts, integer=True, minimum=1)
        if self.norm.name not in _MOVES:
            raise RobustError(f"Square has moves for the norms {known_names(_MOVES)}; received norm "
                              f"{self.norm.name!r}.")

    attacks_clean_mistakes = False  # the clean margin says which images are already broken

    def check_model(self, image_shape, num_classes: int) -> None:
        smallest = _MOVES[self.norm.name].smallest
        if len(image_shape) != 3 or min(image_shape[:2]) < smallest:
            raise RobustError(
                f"Square attacks images shaped (height, width, channels) of at least {smallest} x "
                f"{smallest} pixels for the {self.norm.label} norm; received images of shape "
                f"{tuple(image_shape)}.")

    def _moves(self, image_shape):
        moves = _MOVES[self.norm.name]
        height, width, channels = (int(d) for d in image_shape)
        fractions = [self.p_init / 2 ** k for k in range(len(_HALVINGS) + 1)]
        return moves(height, width, channels, fractions)

    def runs(self, num_classes: int) -> int:
        return self.restarts

    def stream(self, rng, run):
        return rng.fold(0).fold(run)  # the streams robust had before the step API: its numbers stay as they were

    def perturb(self, ctx: Context):
        """One run: from a random start, ``queries`` proposals, each kept where it lowers the margin."""
        x, goal, eps, low, high = ctx.x, ctx.goal, ctx.eps, ctx.low, ctx.high
        moves = self._moves(tuple(x.shape[1:]))
        phases = backend.tensor([_halvings(i, self.queries) for i in range(self.queries)], "int32")

        def margin(xt):  # what the search lowers; at most 0 once the image is broken
            return -objective(ctx.logits(xt), goal, loss="margin", targeted=self.targeted)

        column = (-1,) + (1,) * (len(x.shape) - 1)
        start = moves.start(x, eps, ctx.rng.fold(self.queries), low, high)

        def search(i, current, m):
            standing = m > 0
            proposal = moves.propose(x, current, eps, ops.take(phases, i), ctx.rng.fold(i), low, high)
            m_new = margin(proposal)
            better = ops.logical_and(standing, m_new < m)
            return i + 1, ops.where(ops.reshape(better, column), proposal, current), ops.where(better, m_new, m)

        _, best, m = ops.while_loop(lambda i, current, m: ops.logical_and(i < self.queries, ops.any(m > 0)),
                                    search, (ops.zeros((), "int32"), start, margin(start)))
        return ops.where(ops.reshape(m < margin(x), column), best, x)  # the image itself unless the search beat it
