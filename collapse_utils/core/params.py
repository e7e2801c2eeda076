"""Typed chapter parameters: one declaration per chapter that validates, documents and resolves.

A chapter declares its parameters once, as a dataclass whose defaults are the ``cpu`` preset::

    @dataclass(frozen=True)
    class Params(ChapterParams):
        chapter: ClassVar[str] = "02"
        seeds: int = param(32, "independent runs (vectorised)", lo=2, hi=100_000)
        covariance_type: str = param("full", "EM's covariance model", choices=COVARIANCE_TYPES)

        @classmethod
        def cross_checks(cls, c: Checker, p: dict) -> None:   # constraints between parameters
            c.check(p["regime_seeds"] <= p["seeds"], "regime_seeds must not exceed seeds")

A preset file (``collapse_utils/chapters/presets/<id>.yaml``) lists only what differs from these
defaults.  :func:`resolve` applies ``defaults <- preset <- given`` once, and :meth:`ChapterParams.check`
refuses bad values with one :class:`ParamError` listing every problem (the messages of the README's
bad-input catalogue).  An instance reads both as attributes (``p.seeds``) and as a read-only mapping
(``p["seeds"]``, ``dict(p)``).
"""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = ["PRESETS", "COMMON_PARAMS", "WALL_TIME_PARAMS", "ParamError", "Checker", "Spec", "param",
           "ChapterParams", "resolve"]

#: smoke (seconds, structure only), cpu (the default book, minutes on a laptop), pretrained (cpu plus the studies
#: that start from the pretrained SmolLM2-135M, chapters 04 and 06; under an hour on two cores), paper (a GPU)
PRESETS = ("smoke", "cpu", "pretrained", "paper")
#: parameters every chapter has besides its own
COMMON_PARAMS = ("preset", "run_name")
#: parameters that change only the wall time, never a number (the reproducibility contract):
#: runs that differ only in these share a results folder and resume each other's checkpoints
WALL_TIME_PARAMS = ("parallel_runs",)


class ParamError(ValueError):
    """Invalid chapter parameters (raised before any compute)."""


@dataclass(frozen=True)
class Spec:
    """What a parameter may hold: ``kind`` is int, float, bool, str, choice, ints (a list of
    integers), floats (a list of numbers), regimes (a list of regime strings) or any."""

    kind: str
    doc: str = ""
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    choices: tuple | None = None
    nonempty: bool = True
    nullable: bool = False


def _kind_of(default: Any) -> str:
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "float"
    if isinstance(default, str):
        return "str"
    if isinstance(default, (list, tuple)) and default and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in default):
        return "ints"
    return "any"


def param(default: Any, doc: str = "", *, kind: str | None = None, lo=None, hi=None, open_lo: bool = False,
          open_hi: bool = False, choices=None, nonempty: bool = True, nullable: bool = False):
    """A dataclass field carrying its :class:`Spec` (the default is the ``cpu`` preset's value)."""
    k = kind or ("choice" if choices is not None else _kind_of(default))
    spec = Spec(k, doc, lo, hi, open_lo, open_hi, tuple(choices) if choices is not None else None, nonempty,
                nullable)
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda d=default: copy.deepcopy(d), metadata={"spec": spec})
    return field(default=default, metadata={"spec": spec})


class Checker:
    """Collects every problem with a parameter set, then raises one ParamError listing them all."""

    def __init__(self, params: Mapping, chapter: str):
        self.p = params
        self.chapter = chapter
        self.problems: list[str] = []

    def _get(self, name):
        if name not in self.p:
            self.problems.append(f"missing parameter {name!r}")
            return None
        return self.p[name]

    def int(self, name: str, lo: int | None = None, hi: int | None = None):
        v = self._get(name)
        if v is None:
            return self
        if isinstance(v, bool) or not isinstance(v, int):
            self.problems.append(f"{name} must be an integer, got {v!r}")
        elif (lo is not None and v < lo) or (hi is not None and v > hi):
            self.problems.append(f"{name} must lie in [{lo if lo is not None else '-inf'}, "
                                 f"{hi if hi is not None else 'inf'}], got {v}")
        return self

    def float(self, name: str, lo: float | None = None, hi: float | None = None, open_lo=False, open_hi=False):
        v = self._get(name)
        if v is None:
            return self
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            self.problems.append(f"{name} must be a number, got {v!r}")
            return self
        bad = (lo is not None and (v <= lo if open_lo else v < lo)) or (
            hi is not None and (v >= hi if open_hi else v > hi))
        if bad:
            self.problems.append(f"{name} must lie in {'(' if open_lo else '['}{lo}, {hi}"
                                 f"{')' if open_hi else ']'}, got {v}")
        return self

    def choice(self, name: str, choices):
        v = self._get(name)
        if v is not None and v not in choices:
            self.problems.append(f"{name} must be one of {list(choices)}, got {v!r}")
        return self

    def bool(self, name: str):
        v = self._get(name)
        if v is not None and not isinstance(v, bool):
            self.problems.append(f"{name} must be true or false, got {v!r}")
        return self

    def str(self, name: str):
        v = self._get(name)
        if v is not None and not isinstance(v, str):
            self.problems.append(f"{name} must be a string, got {v!r}")
        return self

    def ints(self, name: str, lo: int | None = None, nonempty: bool = True):
        v = self._get(name)
        if v is None:
            return self
        if not isinstance(v, (list, tuple)) or (nonempty and not v) or not all(
                isinstance(x, int) and not isinstance(x, bool) for x in v):
            self.problems.append(f"{name} must be a non-empty list of integers, got {v!r}")
        elif lo is not None and v and min(v) < lo:
            self.problems.append(f"every entry of {name} must be >= {lo}, got {v!r}")
        return self

    def floats(self, name: str, lo: float | None = None, hi: float | None = None, nonempty: bool = True):
        v = self._get(name)
        if v is None:
            return self
        if not isinstance(v, (list, tuple)) or (nonempty and not v) or not all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
            self.problems.append(f"{name} must be a non-empty list of numbers, got {v!r}")
        elif (lo is not None and v and min(v) < lo) or (hi is not None and v and max(v) > hi):
            self.problems.append(f"every entry of {name} must lie in [{lo}, {hi}], got {v!r}")
        return self

    def regimes(self, name: str):
        from .regimes import parse_regime

        v = self._get(name)
        if v is None:
            return self
        if not isinstance(v, (list, tuple)) or not v:
            self.problems.append(f"{name} must be a non-empty list of regimes, got {v!r}")
            return self
        for r in v:
            try:
                parse_regime(r)
            except (ValueError, TypeError) as e:
                self.problems.append(f"{name}: {e}")
        return self

    def spec(self, name: str, s: Spec):
        """Check one parameter against its declared :class:`Spec`."""
        if s.nullable and self.p.get(name, 0) is None:
            return self
        if s.kind == "int":
            return self.int(name, s.lo, s.hi)
        if s.kind == "float":
            return self.float(name, s.lo, s.hi, s.open_lo, s.open_hi)
        if s.kind == "choice":
            return self.choice(name, s.choices)
        if s.kind == "bool":
            return self.bool(name)
        if s.kind == "str":
            return self.str(name)
        if s.kind == "ints":
            return self.ints(name, s.lo, s.nonempty)
        if s.kind == "floats":
            return self.floats(name, s.lo, s.hi, s.nonempty)
        if s.kind == "regimes":
            return self.regimes(name)
        self._get(name)
        return self

    def check(self, cond: bool, message: str):
        if not cond:
            self.problems.append(message)
        return self

    def done(self) -> None:
        from .results import _NAME_RE

        rn = self.p.get("run_name")
        if rn and not _NAME_RE.match(str(rn)):
            self.problems.append(f"run_name {rn!r} may contain only letters, digits and _ . = + -")
        pr = self.p.get("preset")
        if pr is not None and pr not in PRESETS:
            self.problems.append(f"preset must be one of {list(PRESETS)}, got {pr!r}")
        if self.problems:
            raise ParamError(f"invalid parameters for chapter {self.chapter}:\n  - " + "\n  - ".join(self.problems))


@dataclass(frozen=True)
class ChapterParams(Mapping):
    """Base of every chapter's ``Params``: the two common parameters and the machinery.

    Subclasses set ``chapter`` and declare their own fields with :func:`param`; the defaults are
    the ``cpu`` preset.  ``cross_checks`` adds constraints between parameters (it only runs once
    every value has the right type, so it may compare them freely).
    """

    chapter: ClassVar[str] = ""
    #: run :meth:`cross_checks` even when a value has the wrong type or range (a chapter whose
    #: cross checks skip values of the wrong type sets this, so that one error lists every problem)
    cross_checks_always: ClassVar[bool] = False
    preset: str = param("cpu", "smoke | cpu | pretrained | paper: the preset the other values come from",
                        choices=PRESETS)
    run_name: str = param("", "results folder name; derived from the preset and the changes when empty")

    # -- declaration -------------------------------------------------------------------------
    @classmethod
    def specs(cls) -> dict[str, Spec]:
        """Every chapter-specific parameter and its :class:`Spec`, in declaration order."""
        return {f.name: f.metadata["spec"] for f in dataclasses.fields(cls) if f.name not in COMMON_PARAMS}

    @classmethod
    def defaults(cls) -> dict:
        """The declared defaults (the ``cpu`` preset), common parameters excluded."""
        out = {}
        for f in dataclasses.fields(cls):
            if f.name in COMMON_PARAMS:
                continue
            out[f.name] = f.default_factory() if f.default is dataclasses.MISSING else copy.deepcopy(f.default)
        return out

    @classmethod
    def cross_checks(cls, c: Checker, p: Mapping) -> None:
        """Constraints between parameters (override in a chapter)."""

    @classmethod
    def check(cls, values: Mapping) -> None:
        """One :class:`ParamError` listing every problem, before any compute."""
        c = Checker(values, cls.chapter)
        for name, s in cls.specs().items():
            c.spec(name, s)
        if cls.cross_checks_always or not c.problems:
            cls.cross_checks(c, values)
        c.done()

    @classmethod
    def from_values(cls, values: Mapping) -> ChapterParams:
        """Check ``values`` (every parameter) and build the instance."""
        unknown = sorted(set(values) - set(cls.specs()) - set(COMMON_PARAMS))
        if unknown:
            raise ParamError(f"unknown parameter(s) {unknown} for chapter {cls.chapter}")
        cls.check(values)
        return cls(**{k: copy.deepcopy(v) for k, v in values.items()})

    # -- a read-only mapping ---------------------------------------------------------------
    @classmethod
    def _names(cls) -> tuple[str, ...]:
        # dataclasses.fields, not __dataclass_fields__: that one also lists ClassVars such as ``chapter``
        return tuple(f.name for f in dataclasses.fields(cls))

    def __getitem__(self, key: str) -> Any:
        if key in self._names():
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def to_dict(self) -> dict:
        return {k: copy.deepcopy(getattr(self, k)) for k in self}

    def replace(self, **changes) -> ChapterParams:
        """A checked copy with some values changed (``p.replace(seeds=2)``)."""
        return type(self).from_values({**self.to_dict(), **changes})


def resolve(cls: type[ChapterParams], preset: str, preset_values: Mapping, given: Mapping) -> tuple[dict, dict]:
    """``defaults <- preset <- given``, the one place where a chapter's values are decided.

    ``given`` holds the values set explicitly (papermill ``-p``, the command line's ``-p``, an
    edited parameters cell); ``None`` there means "not given".  Returns ``(values, sources)``
    where ``sources[name]`` is ``"given"`` or ``"preset <name>"``.  Nothing is checked here.
    """
    values = cls.defaults()
    stray = sorted(set(preset_values) - set(values))
    if stray:
        raise ParamError(f"preset {preset!r} sets {stray}, which chapter {cls.chapter} does not have")
    values.update(copy.deepcopy(dict(preset_values)))
    sources = {k: f"preset {preset}" for k in values}
    for k, v in given.items():
        if k in COMMON_PARAMS or v is None:
            continue
        if k not in values:
            raise ParamError(f"unknown parameter {k!r} for chapter {cls.chapter}; valid parameters: "
                             f"{', '.join(sorted(values))}, run_name")
        values[k] = v
        sources[k] = "given"
    values["preset"] = preset
    values["run_name"] = given.get("run_name") or ""
    return values, sources
