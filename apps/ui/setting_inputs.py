"""A page's input for a declared setting (`cadis.settings.setting`): the widget's keyword arguments come from the
one declaration (its help and hint, its bounds, its kind, its choices), so what a page offers cannot drift from what
the library accepts. UI-free: it returns the keywords st.number_input, st.selectbox and st.checkbox take.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cadis.settings import Setting, settings


def declared(config_cls: Any, name: str) -> tuple[Setting, Any]:
    """The (Setting, default) of `name` in `config_cls`, or a KeyError naming what is declared."""
    found = settings(config_cls)
    if name not in found:
        raise KeyError(f"{getattr(config_cls, '__name__', config_cls)} declares no setting {name!r}; it declares "
                       f"{', '.join(found)}")
    return found[name]


def help_text(spec: Setting, note: str = "") -> str:
    """The declaration's help (as it is written), then its hint (when it has one), then a page's `note`, as
    sentences."""
    hint = spec.hint.strip().rstrip(".")
    parts = [spec.help.strip().rstrip("."), hint[:1].upper() + hint[1:], note.strip().rstrip(".")]
    return ". ".join(p for p in parts if p) + "."


def _bound(config_cls: Any, bound: float | str | None, which: str) -> float | None:
    """A numeric bound; one that names another setting (subset >= batch_size) is that setting's own bound of the same
    side, the tightest known without the other value (validation checks the two together)."""
    seen = set()
    while isinstance(bound, str) and bound not in seen:
        seen.add(bound)
        bound = getattr(declared(config_cls, bound)[0], which)
    return None if isinstance(bound, str) else bound


def widget_spec(config_cls: Any, name: str, label: str | None = None, caps: Mapping[str, float] | None = None,
                none_as: float | None = None, note: str = "") -> dict[str, Any]:
    """Keyword arguments for the widget of the setting `name` declared in `config_cls`.

    - `help`: the declaration's help and hint (then `note`, a page's own words, when given);
    - a number: `min_value` / `max_value` from the declared low / high, integers for an int setting and floats for
      a float one (so Streamlit picks the widget's type from them); `caps[name]`, a page's limit (the hosted
      demo's), replaces the declared high where it is tighter, never where it is looser; `none_as`, the value the
      widget shows for None ("0 = all"), is allowed below the declared low;
    - a setting with choices: `options`;
    - a switch (bool) or free text: `help` alone.

    The value is not among them: the pages keep it in st.session_state (presets fill it there), and Streamlit
    warns when a widget has both. `label` is included when given.
    """
    spec, default = declared(config_cls, name)
    kind = spec.kind or type(default)
    out: dict[str, Any] = {} if label is None else {"label": label}
    out["help"] = help_text(spec, note)
    if spec.choices is not None:
        out["options"] = list(spec.choices)
        return out
    if kind not in (int, float):
        return out
    low, high = _bound(config_cls, spec.low, "low"), _bound(config_cls, spec.high, "high")
    # An open low (σ > 0, lr > 0) stays the widget's min_value: the widget lets the low itself through and
    # validate() refuses it with the declaration's words. The next representable float above it would show as
    # 0 in most widgets' formats anyway (σ's "%.3f" reads 0.000).
    if none_as is not None:
        low = none_as if low is None else min(low, none_as)
    cap = (caps or {}).get(name)
    if cap is not None:
        high = cap if high is None else min(high, cap)
    if low is not None:
        out["min_value"] = kind(low)
    if high is not None:
        out["max_value"] = kind(high)
    return out
