"""Registry of self-supervised methods: register by decorator, create by name, list by glob.

Every method module under ``selfsup.methods`` decorates its :class:`~selfsup.methods.base.Method`
subclass with :func:`register_method`; ``selfsup.methods`` imports them all explicitly, so the
registry is complete as soon as :mod:`selfsup` is imported (no import-order surprises).
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from selfsup.methods.base import Method

_METHODS: dict[str, type[Method]] = {}

M = TypeVar("M", bound="type[Method]")


class UnknownNameError(KeyError):
    """An unknown method or backbone name; the message lists the closest known names."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0])


def closest(name: str, choices: list[str], n: int = 3) -> list[str]:
    """The known names closest to ``name`` (for "did you mean" hints)."""
    return difflib.get_close_matches(name, choices, n=n, cutoff=0.4)


def register_method(name: str) -> Callable[[M], M]:
    """Class decorator: make a :class:`Method` subclass available as ``name``."""

    def wrap(cls: M) -> M:
        if name in _METHODS and _METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {_METHODS[name]}")
        cls.name = name
        _METHODS[name] = cls
        return cls

    return wrap


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a glob pattern, sorted."""
    return sorted(n for n in _METHODS if fnmatch.fnmatch(n, pattern))


def get_method_class(name: str) -> type[Method]:
    """The class registered as ``name``; a clear error with close matches otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        hint = closest(name, list(_METHODS))
        did_you_mean = f" Did you mean {', '.join(hint)}?" if hint else ""
        raise UnknownNameError(
            f"unknown method {name!r}.{did_you_mean} Known methods: {', '.join(list_methods())}"
            " (run `selfsup methods`)."
        ) from None
