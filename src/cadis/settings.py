"""Settings declared once: a dataclass field with its help text and its constraints.

`setting(default, help, ...)` declares a field; `check_settings` refuses a value out of range (a CadisError
naming the flag, with a hint), and `add_flags` / `from_flags` make and read the command line's flags from the
same declaration, so the CLI, the library and the apps cannot drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
from dataclasses import dataclass, field
from typing import Any

from cadis.errors import CadisError


@dataclass(frozen=True)
class Setting:
    help: str
    kind: type | None = None  # int, float, str or bool; taken from the default unless it is None
    low: float | str | None = None  # a number, or the name of the setting it may not go below
    high: float | str | None = None  # a number, or the name of the setting it may not exceed
    open_low: bool = False
    hint: str = ""
    choices: tuple[str, ...] | None = None
    flag: str | None = None  # the flag, when not --name; for a setting that defaults to True, the flag turns it off
    when: str | None = None  # checked only when this other (boolean) setting is true
    cli: bool = True  # False: no flag (the library's or a recipe's setting)
    default_note: str | None = None  # the flag defaults to None and the command fills it in, as this says
    optional: bool = False  # None is allowed (it means "off") though the default is not None


def setting(default: Any, help: str, **constraints: Any) -> Any:
    """A dataclass field carrying its Setting (help text and constraints)."""
    return field(default=default, metadata={"setting": Setting(help, **constraints)})


def settings(cls_or_obj: Any) -> dict[str, tuple[Setting, Any]]:
    """name -> (Setting, default) for each declared field."""
    return {f.name: (f.metadata["setting"], f.default) for f in dataclasses.fields(cls_or_obj)
            if "setting" in f.metadata}


def flag(name: str, spec: Setting | None = None) -> str:
    return spec.flag if spec is not None and spec.flag else "--" + name.replace("_", "-")


def _kind(spec: Setting, default: Any) -> type:
    return spec.kind or type(default)


def check_settings(obj: Any) -> None:
    """Refuse (CadisError, one line naming the flag) any declared setting out of range or not finite."""
    for name, (spec, default) in settings(obj).items():
        value = getattr(obj, name)
        if (spec.when and not getattr(obj, spec.when)) or (value is None and (default is None or spec.optional)):
            continue
        low, high, hint = spec.low, spec.high, spec.hint
        if isinstance(low, str):
            low, hint = getattr(obj, low), f"it must hold at least {flag(low)} ({getattr(obj, low):g})"
        if isinstance(high, str):
            high, hint = getattr(obj, high), f"it must not exceed {flag(high)} ({getattr(obj, high):g}); {hint}"
        kind = _kind(spec, default)
        if spec.choices is not None and value not in spec.choices:
            raise CadisError(f"{flag(name)} must be one of {', '.join(spec.choices)} (got {value!r}).")
        if kind is int:
            check_integer(flag(name), value, low, high, hint)
        elif kind is float:
            check_real(flag(name), value, low, high, spec.open_low, hint)


def check_real(flag: str, value: Any, low: float | None = None, high: float | None = None, open_low: bool = False,
               hint: str = "") -> None:
    """A finite real number in [low, high] ((low, high] with `open_low`), or a CadisError naming the flag."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if open_low else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = f" {'>' if open_low else '>='} {low:g}" if low is not None else ""
        if high is not None:
            bounds = f" in {'(' if open_low else '['}{low:g}, {high:g}]" if low is not None else f" <= {high:g}"
        raise CadisError(f"{flag} must be a finite number{bounds} (got {value!r}); {hint}.")


def check_integer(flag: str, value: Any, low: int | None = None, high: int | None = None, hint: str = "") -> None:
    """An integer in [low, high], or a CadisError naming the flag."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        bounds = f" >= {low}" if high is None else f" from {low} to {high:,}"
        raise CadisError(f"{flag} must be an integer{bounds} (got {value!r}); {hint}.")


def add_flags(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per declared setting of `cls` (with its help and default); the values are checked later, by
    check_settings, so the command line and the library refuse a value with the same words."""
    for name, (spec, default) in settings(cls).items():
        if not spec.cli:
            continue
        kind = _kind(spec, default)
        if kind is bool:  # a switch: it turns a False default on, or a True default off
            parser.add_argument(flag(name, spec) if not default else spec.flag or "--no-" + name.replace("_", "-"),
                                dest=name, action="store_false" if default else "store_true",
                                help=spec.help.replace("%", "%%"))
            continue
        if spec.default_note is not None:
            default, shown = None, f" (default {spec.default_note})"
        else:
            shown = "" if default is None else f" (default {default:g})" if isinstance(default, float) else \
                f" (default {default})"
        parser.add_argument(flag(name, spec), dest=name, type=kind, default=default, choices=spec.choices,
                            help=(spec.help + shown).replace("%", "%%"))


def from_flags(cls: type, args: argparse.Namespace, **fallbacks: Any) -> Any:
    """An instance of `cls` from the parsed flags; `fallbacks` fill the flags left unset (None) whose default
    the command computes."""
    values = {}
    for name, (spec, _) in settings(cls).items():
        if spec.cli:
            value = getattr(args, name)
            values[name] = fallbacks[name] if value is None and name in fallbacks else value
    return cls(**values)
