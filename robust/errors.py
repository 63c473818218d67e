"""User-facing errors.

Every error caused by what a user passed in (a name, a shape, a file, an
option value) is a :class:`RobustError`: one paragraph that says what was
expected, what was received and how to fix it. The CLI turns it into exit
code 2 without a traceback; anything else is a bug: one paragraph and exit
code 1, with the traceback under ``robust --debug``.
"""

from __future__ import annotations


#: The largest count (steps, queries, restarts, images per class ...) any option takes: beyond it a run would not
#: finish in a lifetime, and arrays sized by it would not fit in memory.
MAX_COUNT = 10_000_000


class RobustError(ValueError):
    """Bad input from the user, explained in plain words."""


def known_names(names) -> str:
    """Format a collection of names for an error message: ``'a', 'b', 'c'``."""
    return ", ".join(repr(n) for n in sorted(names))
