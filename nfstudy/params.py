"""Typed, per-profile experiment parameters with errors that name the fix.

Each experiment declares a frozen dataclass of its parameters and a table of profiles
(``{"paper": Params(...), "quick": Params(...)}``); :func:`resolve` picks a profile and
applies overrides (from a notebook's parameters cell, the CLI or ``make PARAMS=...``),
checking names and types. ``None`` means "the profile's value", so a notebook can list
every parameter with ``None`` as its default.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

__all__ = ["check_choice", "check_positive", "coerce", "resolve", "to_dict"]

P = TypeVar("P")


def check_choice(kind: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return ``value`` if it is one of ``choices``, else raise a ValueError listing them."""
    choices = list(choices)
    if value not in choices:
        listed = ", ".join(repr(c) if not isinstance(c, str) else c for c in choices)
        raise ValueError(f"unknown {kind} {value!r}: choose one of {listed}")
    return value


def check_positive(name: str, value: Any, *, integer: bool = False, allow_zero: bool = False) -> Any:
    """Raise a clear error unless ``value`` is a positive number (an int if ``integer``)."""
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise TypeError(f"{name} must be {'an int' if integer else 'a number'}, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")
    return value


def _coerce(name: str, value: Any, hint: Any) -> Any:
    """Coerce ``value`` to the annotated type where that is lossless; else TypeError."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(name, value, arg)
            except TypeError as error:
                errors.append(str(error))
        raise TypeError(errors[0])
    if origin is tuple:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"parameter {name} must be a list, got {value!r}")
        item = args[0] if args else Any
        return tuple(_coerce(name, v, item) for v in value)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError(f"parameter {name} must be True or False, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise TypeError(f"parameter {name} must be an int, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError(f"parameter {name} must be a number, got {value!r}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError(f"parameter {name} must be a string, got {value!r}")
    return value


def coerce(cls: type, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """``overrides`` of the parameters dataclass ``cls``, each coerced to its field's type
    (``None`` values dropped); an unknown name is a ValueError listing the valid ones, a
    value of the wrong type a TypeError. The dataclass's own checks are not run."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    unknown = sorted(set(given) - set(names))
    if unknown:
        raise ValueError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for "
            f"{cls.__name__}: valid parameters are {', '.join(names)}"
        )
    return {k: _coerce(k, v, hints[k]) for k, v in given.items()}


def resolve(profiles: Mapping[str, P], profile: str, overrides: Mapping[str, Any] | None = None) -> P:
    """The parameters of ``profile`` with ``overrides`` applied (``None`` values ignored)."""
    check_choice("profile", profile, profiles)
    base = profiles[profile]
    return dataclasses.replace(base, **coerce(type(base), overrides))  # runs the dataclass's own checks again


def to_dict(params: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a parameters dataclass (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(params).items()}
