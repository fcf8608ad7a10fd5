"""A run's identity: its configuration, and the folder that holds it.

A run measures what its *configuration* says: the figure, the profile, and the resolved
parameters (``run.json``'s ``params``) less those that only say how the run executes
(the figure package's ``execution_only()``: ``fuse``, ``checkpoint_every``,
``torch_compile``, ``chunk_size``; the device is no parameter at all). Two runs of one
configuration measure the same thing and may be compared and averaged; two of different
configurations never are.

Folders (a contract, README.md)::

    results/<figure>/<profile>/seed=<S>/                          the profile's own parameters
    results/<figure>/<profile>+<name>=<value>+...-<hash>/seed=<S>/  any other configuration

The default configuration keeps the folder it always had. Any other (``-p layer 44``,
``DATASET=fashion``, another model, a notebook run by hand with other values) is named by
what differs from its profile, in the order ``Params`` declares the fields, then by a hash:

* ``<name>=<value>`` for each differing parameter: a list as ``a,b``; ``imagefolder:PATH``
  as the folder's base name; any character but ``A-Za-z0-9._,=+@-`` as ``_``; a value cut
  at :data:`VALUE_CHARS` characters (ending ``..``); as many parameters as fit in
  :data:`READABLE_CHARS` characters, then ``+<N>_more`` for the N left out;
* ``-<hash>``: the first :data:`HASH_CHARS` hex digits of the SHA-256 of the canonical JSON
  (:func:`canonical`: sorted keys, no spaces, lists for tuples, a whole float as an int) of
  the configuration's parameters: the same configuration gives the same name on every
  machine, and two whose readable parts coincide (values cut, two image folders of one base
  name, an image folder given by another path) get different names. ``run.json`` records
  the whole hash, so a clash of the short one cannot mix runs unnoticed.

Every character of a name is one that needs no quoting in a POSIX shell (``shlex.quote``
leaves the name as it is; ``~``, which zsh's extended globbing reads as a pattern, is not
used), in a URL path (the report links the figures) or on Windows. ``+`` separates the
parameters: a ``+`` not followed by ``<name>=`` is part of a value (a series ``none+agc``).
A parameter absent from an older ``run.json`` (recorded before the parameter existed)
is taken at its declared default in ``Params``, which by the project's convention is what
the code did before it could be changed; a recorded parameter that ``Params`` no longer has
is a difference (its value then is no longer a choice, so runs that made another cannot be
told apart from those that did not).

The library knows no figure: :func:`figure_spec` asks the application layer
(:mod:`nfstudy.cli`) for a figure's ``Params`` and profiles, lazily. A name it does not know
(a figure of one's own, a test's) has no profile to differ from: each of its runs is its
profile's default configuration.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
from collections.abc import Mapping
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any

__all__ = [
    "HASH_CHARS",
    "SEPARATOR",
    "Configuration",
    "FigureSpec",
    "canonical",
    "configuration",
    "configuration_for",
    "digest",
    "figure_spec",
    "profile_of",
]

SEPARATOR = "+"  # <profile>+<name>=<value>+...-<hash>
HASH_CHARS = 6
VALUE_CHARS = 24
READABLE_CHARS = 64
IMAGE_FOLDER = "imagefolder:"  # nfstudy.data.IMAGE_FOLDER (not imported: this module stays light)
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")  # shlex.quote's safe characters, less ':', '/' and '%' (paths, URLs)


def canonical(value: Any) -> Any:
    """``value`` as the JSON the hash is taken of: tuples as lists, a whole float as an int
    (``1.0`` and ``1`` are one value: a coerced override and a profile's literal), mappings
    with string keys; anything else JSON cannot hold, as its text."""
    if value is None or isinstance(value, (bool, str, int)):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() and abs(value) < 2**53 else value
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in value.items()}
    return str(value)


def digest(params: Mapping[str, Any]) -> str:
    """The SHA-256 (hex) of the canonical JSON of ``params``."""
    text = json.dumps(canonical(params), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def profile_of(name: str) -> str:
    """The profile of a configuration's folder name (``quick`` of ``quick+layer=44-1911ee``)."""
    return name.split(SEPARATOR, 1)[0]


def _text(value: Any) -> str:
    """A parameter's value as it appears in a folder name (see the module docstring)."""
    if isinstance(value, str) and value.startswith(IMAGE_FOLDER):
        path = value[len(IMAGE_FOLDER) :].rstrip("/\\")
        value = PureWindowsPath(path).name if "\\" in path else PurePosixPath(path).name
        value = value or "imagefolder"
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "none"
    elif isinstance(value, (list, tuple)):
        text = ",".join(_text(v) for v in value) if value else "empty"
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = str(value)
    text = _UNSAFE.sub("_", text)
    return text if len(text) <= VALUE_CHARS else text[: VALUE_CHARS - 2] + ".."


@dataclasses.dataclass(frozen=True)
class Configuration:
    """What a run measures: ``figure``, ``profile``, ``params`` (the resolved parameters
    less the execution-only ones, canonical) and ``differs`` (each parameter whose value is
    not the profile's: ``name -> (this configuration's, the profile's)``, in ``Params``'
    order; a parameter ``Params`` no longer has (:attr:`removed`) has ``None`` there)."""

    figure: str
    profile: str
    params: Mapping[str, Any]
    differs: Mapping[str, tuple[Any, Any]]
    execution_only: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()  # recorded parameters that Params no longer has

    @property
    def default(self) -> bool:
        """Whether this is the profile's own configuration (the gallery's)."""
        return not self.differs

    @functools.cached_property
    def hash(self) -> str:
        return digest(self.params)

    @property
    def name(self) -> str:
        """The folder name: the profile, or ``<profile>+<name>=<value>+...-<hash>``."""
        if self.default:
            return self.profile
        items = [f"{k}={_text(v)}" for k, (v, _) in self.differs.items()]
        shown = [items[0]]
        for item in items[1:]:
            if len(SEPARATOR.join([*shown, item])) > READABLE_CHARS:
                break
            shown.append(item)
        if len(shown) < len(items):
            shown.append(f"{len(items) - len(shown)}_more")
        return f"{self.profile}{SEPARATOR}{SEPARATOR.join(shown)}-{self.hash[:HASH_CHARS]}"

    def describe(self, full: bool = False) -> str:
        """The differing parameters as ``layer=44 (quick: 55)``, comma-separated ('' for the
        default); ``full`` shows each value whole (an image folder's whole path)."""
        show = (lambda v: json.dumps(canonical(v))) if full else _text
        return ", ".join(
            f"{k}={show(v)} ({self.profile}: {'no such parameter' if k in self.removed else show(p)})" for k, (v, p) in self.differs.items()
        )

    def record(self) -> dict[str, Any]:
        """What ``run.json`` records under ``config``."""
        return {
            "name": self.name,
            "default": self.default,
            "hash": self.hash,
            "differs": {k: {"value": canonical(v), "profile": canonical(p)} for k, (v, p) in self.differs.items()},
            "execution_only": list(self.execution_only),
        }


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    """What identifies a figure's runs: its ``Params`` class, the fields in order, each
    field's declared default, each profile's parameters (canonical) and the names left out
    of a configuration (execution-only)."""

    params_type: type
    fields: tuple[str, ...]
    declared: Mapping[str, Any]
    profiles: Mapping[str, Mapping[str, Any]]
    execution_only: frozenset[str]


def figure_spec(figure: str) -> FigureSpec | None:
    """The :class:`FigureSpec` of a figure of the figure package, through the application
    layer (lazily: the library imports no figure); None for a name it does not define."""
    try:
        from .cli import figure_package

        package = figure_package()
    except ImportError:  # an installed nfstudy without its figures
        return None
    if figure not in getattr(package, "FIGURES", ()):
        return None
    module = package.load(figure)
    return _spec(module.Params, tuple(module.PROFILES.items()), tuple(package.execution_only()))


@functools.lru_cache(maxsize=64)
def _spec(params_type: type, profiles: tuple[tuple[str, Any], ...], execution_only: tuple[str, ...]) -> FigureSpec:
    fields = dataclasses.fields(params_type)
    declared = {}
    for f in fields:
        if f.default is not dataclasses.MISSING:
            declared[f.name] = canonical(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            declared[f.name] = canonical(f.default_factory())
    return FigureSpec(
        params_type=params_type,
        fields=tuple(f.name for f in fields),
        declared=declared,
        profiles={name: canonical(dataclasses.asdict(p)) for name, p in profiles},
        execution_only=frozenset(execution_only),
    )


def configuration(figure: str, profile: str, params: Mapping[str, Any] | None) -> Configuration:
    """The configuration of a run of ``figure`` under ``profile`` with the resolved
    ``params`` (a dict, as ``run.json`` records them, or the ``Params`` dataclass)."""
    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        params = dataclasses.asdict(params)
    params = canonical(dict(params or {}))
    spec = figure_spec(figure)
    if spec is None or profile not in spec.profiles:  # nothing to differ from
        return Configuration(figure, profile, params, {})
    dropped = spec.execution_only
    own = {k: v for k, v in spec.profiles[profile].items() if k not in dropped}
    recorded = {k: v for k, v in params.items() if k not in dropped}
    # Absent (recorded before the parameter existed): its declared default.
    filled = {k: recorded[k] if k in recorded else spec.declared.get(k) for k in spec.fields if k not in dropped}
    filled.update({k: v for k, v in sorted(recorded.items()) if k not in filled})  # no longer a parameter
    differs = {k: (v, own.get(k)) for k, v in filled.items() if k not in own or own[k] != v}
    execution_only = tuple(k for k in spec.fields if k in dropped)
    removed = tuple(k for k in differs if k not in spec.fields)
    return Configuration(figure, profile, filled, differs, execution_only, removed)


def configuration_for(figure: str, profile: str, overrides: Mapping[str, Any] | None = None) -> Configuration:
    """The configuration of ``profile`` with ``overrides`` (``{"layer": 44}``; ``None``
    values ignored), each coerced to its field's type as the command line's are; an
    unknown name is a ValueError listing the valid ones. The figure's own checks are not
    run (the data need not be here to name a configuration)."""
    spec = figure_spec(figure)
    if spec is None:
        if overrides:
            raise ValueError(f"{figure} is not a figure of this checkout: its configurations can be named only, not given as parameters")
        return Configuration(figure, profile, {}, {})
    from .params import check_choice, coerce

    check_choice("profile", profile, spec.profiles)
    params = {**spec.profiles[profile], **coerce(spec.params_type, overrides)}
    return configuration(figure, profile, params)
