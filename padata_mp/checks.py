"""Arguments checked one way everywhere, before any work starts.

Integers are ``int`` or anything with ``__index__`` (numpy integers), never ``bool``; flags are
``bool`` only.  A bad value raises BadValueError (a ValueError), a value of the wrong type
BadTypeError (a TypeError), each naming the argument and what to give instead.
"""

from __future__ import annotations

import operator

from .errors import BadTypeError, BadValueError


def integer(name: str, value: object, minimum: int | None = None, maximum: int | None = None) -> int:
    """``value`` as an int, if it is an integer within [minimum, maximum]."""
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise BadTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    number = operator.index(value)  # type: ignore[arg-type]  # __index__ was checked above
    if minimum is not None and number < minimum:
        raise BadValueError(f"{name} must be >= {minimum}, got {number}")
    if maximum is not None and number > maximum:
        raise BadValueError(f"{name} must be <= {maximum}, got {number}")
    return number


def seconds(name: str, value: object) -> float:
    """``value`` as a float, if it is a number of seconds > 0 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise BadValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    return float(value)


def flag(name: str, value: object) -> bool:
    """``value``, if it is a bool."""
    if not isinstance(value, bool):
        raise BadTypeError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return value


def require(ok: bool, message: str) -> None:
    """BadValueError(``message``) unless ``ok``."""
    if not ok:
        raise BadValueError(message)
