"""The settings widgets: each one's kind, range, step and help come from its config field's Spec.

A widget shows a config field, the length of a list field (its Spec's `count_label`: "blocks") or one value
of it (`item_label` and its index: "width0"). Its change goes through the config (`changed`, `with_length`),
which validates it, so an invalid combination is refused with the config's own message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import streamlit as st

from deconv import glossary
from deconv.config import Spec, field_spec
from pages.parts.state import CONFIG_CLASSES

PENDING_CHANGE = "pending_change"  # session key: a widget change to apply before the widgets are drawn
LENGTH = "length"  # `part` of the widget for a list field's length


@dataclass(frozen=True)
class Knob:
    """One widget of a config: a field, a list field's length (part LENGTH), or one of its values (part = index)."""

    field: str
    part: int | str | None = None

    def name(self, s: Spec) -> str:
        """The widget's name in its session key: the field's, or the Spec's count or item label."""
        if self.part == LENGTH:
            return s.count_label or f"{self.field}_count"
        if isinstance(self.part, int):
            return f"{s.item_label or self.field}{self.part}"
        return self.field

    def value(self, config: Any) -> Any:
        """What the widget shows for this config."""
        value = getattr(config, self.field)
        return len(value) if self.part == LENGTH else value[self.part] if isinstance(self.part, int) else value

    def apply(self, config: Any, value: Any) -> Any:
        """The config with the widget's value; ValueError when the config refuses it."""
        if self.part == LENGTH:
            return config.with_length(self.field, value)
        if isinstance(self.part, int):
            values = list(getattr(config, self.field))
            values[self.part] = value
            value = tuple(values)
        return config.changed(**{self.field: value})


def knobs(config: Any) -> list[Knob]:
    """Every widget of a config, a list field's length and each of its values included."""
    out = []
    for f in dataclasses.fields(config):
        if f.metadata["spec"].kind == "list":
            out += [Knob(f.name, LENGTH)] + [Knob(f.name, i) for i in range(len(getattr(config, f.name)))]
        else:
            out.append(Knob(f.name))
    return out


def _key(state_key: str, knob: Knob) -> str:
    """The session key of a widget."""
    return f"w.{state_key}.{knob.name(field_spec(CONFIG_CLASSES[state_key], knob.field))}"


def sync_widgets(state_key: str) -> None:
    """Set every widget of a config to the config's values (call from callbacks, before widgets exist).

    Only widgets that show another value are set: setting a widget's state makes the browser take that value,
    and for the slider being moved it would undo key presses made while this run was on its way.
    """
    config = st.session_state[state_key]
    for knob in knobs(config):
        key, value = _key(state_key, knob), knob.value(config)
        if key not in st.session_state or st.session_state[key] != value:
            st.session_state[key] = value


def _apply(state_key: str, knob: Knob) -> None:
    """on_change: put a widget's value into the config; an invalid combination is refused and explained."""
    try:
        new = knob.apply(st.session_state[state_key], st.session_state[_key(state_key, knob)])
    except ValueError as e:
        st.session_state[f"{state_key}.error"] = str(e)
        sync_widgets(state_key)  # put the widget back where the config is
        return
    st.session_state.pop(f"{state_key}.error", None)
    st.session_state[state_key] = new
    sync_widgets(state_key)


def config_widget(state_key: str, field: str, label: str | None = None, part: int | str | None = None,
                  high: float | None = None, disabled: bool = False, container: Any = st) -> None:
    """The widget for a config field (or, with `part`, a list field's length or one value): all from its Spec."""
    s = field_spec(CONFIG_CLASSES[state_key], field)
    knob = Knob(field, part)
    key = _key(state_key, knob)
    config = st.session_state[state_key]
    top = s.high if high is None else min(high, s.high)
    if part is None and s.high is not None and getattr(config, field) > top >= s.low:  # the config fits in no more
        st.session_state[state_key] = config.replace(**{field: type(getattr(config, field))(top)})
        st.session_state[key] = getattr(st.session_state[state_key], field)
    current = knob.value(st.session_state[state_key])
    # First show on this page visit, or in a session the server does not know (it restarted while the tab stayed
    # open): the widget starts from the config, unless the browser sends a value it kept, which wins (below).
    first = key not in st.session_state
    start: dict[str, Any] = {"value": current} if first else {}
    label = label or knob.name(s).replace("_", " ").capitalize()
    common = dict(key=key, on_change=_apply, args=(state_key, knob), disabled=disabled,
                  help=glossary.BLOCKS_HELP if part == LENGTH else s.help)
    kind = "length" if part == LENGTH else "slider" if isinstance(part, int) else s.widget()
    if kind == "length":
        shown = container.slider(label, s.min_len, s.max_len, **start, **common)
    elif kind == "toggle":
        shown = container.toggle(label, **start, **common)
    elif kind == "radio":
        shown = container.radio(label, s.choices, horizontal=True, index=s.choices.index(current) if first else None,
                                **common)
    elif kind == "select_slider":
        options = sorted(set(s.grid()) | {current})
        shown = container.select_slider(label, options, format_func=lambda v: f"{v:g}", **start, **common)
    elif kind == "number":
        shown = container.number_input(label, int(s.low), int(top), **start, **common)
    elif s.kind == "float":
        shown = container.slider(label, float(s.low), float(top), step=float(s.step), **start, **common)
    elif top <= s.low:
        container.caption(f"{label}: {int(top)} (no other value fits)")
        return
    else:
        shown = container.slider(label, int(s.low), int(top), step=int(s.step), **start, **common)
    if first and shown is not None and shown != current:  # a value the browser kept across a server restart: apply it
        st.session_state[PENDING_CHANGE] = (state_key, knob, shown)
        st.rerun()


def apply_pending_change() -> None:
    """Apply a widget change that arrived before this session had its widgets (see `config_widget`)."""
    pending = st.session_state.pop(PENDING_CHANGE, None)
    if pending:
        state_key, knob, value = pending
        st.session_state[_key(state_key, knob)] = value
        _apply(state_key, knob)


def config_error(state_key: str) -> None:
    """Show why the last change was refused, if it was."""
    message = st.session_state.get(f"{state_key}.error")
    if message:
        st.error(f"That change was not applied: {message}.")
