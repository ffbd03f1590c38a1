"""Every kind of feedback LiveAlign takes, in one table: ``FeedbackKind``.

Each member is a row: what a client may send as its ``value``, whether it is an explicit
judgement or an implicit behaviour, the signals fusion makes of it with their default
weights, and whether each rater's own scale is normalized away. Everything else is
derived from this table: the event contract and its validation (``streaming.events``),
the fusion defaults (``streaming.fusion.config``; a config without a weight for every
signal is refused), the feedback API's metric labels.

Adding a kind: add a member here, and say in ``streaming.fusion.signals`` how its value
becomes a signal. Nothing else needs to know.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

Value = int | float | str
MAX_TEXT_CHARS = 32_000
MAX_DWELL_MS = 86_400_000


@dataclass(frozen=True, slots=True)
class SignalSpec:
    """A signal fusion weighs: a kind's value, or for a click each of its targets."""

    name: str
    weight: float  # default weight inside its part (explicit: fixed; implicit: the prior)
    value: float | None = None  # a target's value in [-1, 1] (only kinds with targets)


@dataclass(frozen=True, slots=True)
class KindSpec:
    """One row of the table (see the module docstring)."""

    explicit: bool
    value_help: str  # what ``value`` is, in words, for documentation and error messages
    check: Callable[[Value], None]  # raises ValueError naming what is wrong
    signals: tuple[SignalSpec, ...]
    # Normalized per rater (z-scored on the rater's own scale) when set: the prior variance
    # of the raw signal values (thumbs ±1: 1; ratings 1..5 mapped to -1..1: 0.5 if a rater
    # used the whole scale uniformly).
    scale_prior_var: float | None = None

    @property
    def targets(self) -> Mapping[str, SignalSpec]:
        """The signals chosen by ``value`` (a click's copy/regenerate/...); else empty."""
        return {s.name: s for s in self.signals if s.value is not None}


def _number(value: Value) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _thumb(value: Value) -> None:
    if _number(value) not in (1.0, -1.0):
        raise ValueError("value: a thumb is +1 or -1")


def _rating(value: Value) -> None:
    number = _number(value)
    if number is None or not number.is_integer() or not 1 <= number <= 5:
        raise ValueError("value: a rating is an integer from 1 to 5")


def _text(kind: str) -> Callable[[Value], None]:
    def check(value: Value) -> None:
        if not (isinstance(value, str) and value.strip()):
            raise ValueError(f"value: a {kind} is a non-empty string")
        if len(value) > MAX_TEXT_CHARS:
            raise ValueError(f"value: a {kind} is at most {MAX_TEXT_CHARS} characters")

    return check


_CLICK_TARGETS = (
    SignalSpec("copy", 0.5, value=1.0),
    SignalSpec("regenerate", 0.5, value=-1.0),
    SignalSpec("link", 0.3, value=0.5),
    SignalSpec("share", 0.5, value=1.0),
)
_CLICK_NAMES = tuple(t.name for t in _CLICK_TARGETS)


def _click(value: Value) -> None:
    if value not in _CLICK_NAMES:
        raise ValueError(f"value: a click is one of {', '.join(_CLICK_NAMES)}")


# A compare verdict on the event's response against the other one (``other_response_id``):
# it was "better", "worse", as good ("tie"), or neither was any good ("both_bad").
COMPARE_VERDICTS = ("better", "worse", "tie", "both_bad")


def _compare(value: Value) -> None:
    if value not in COMPARE_VERDICTS:
        raise ValueError(f"value: a compare verdict is one of {', '.join(COMPARE_VERDICTS)}")


def _dwell(value: Value) -> None:
    number = _number(value)
    if number is None or not 0 <= number <= MAX_DWELL_MS:
        raise ValueError(f"value: dwell is milliseconds visible, from 0 to {MAX_DWELL_MS}")


# No docstring on the enum: pydantic would put it into every JSON Schema that uses it.
class FeedbackKind(StrEnum):
    # A member is ``name = name, KindSpec(...)``; the member's value is its name.
    spec: KindSpec
    _value_: str

    def __new__(cls, value: str, spec: KindSpec) -> Self:
        member = str.__new__(cls, value)
        member._value_ = value
        member.spec = spec
        return member

    thumb = "thumb", KindSpec(
        explicit=True, value_help="1 or -1", check=_thumb,
        signals=(SignalSpec("thumb", 1.0),), scale_prior_var=1.0,
    )  # fmt: skip
    rating = "rating", KindSpec(
        explicit=True, value_help="integer 1..5", check=_rating,
        signals=(SignalSpec("rating", 1.0),), scale_prior_var=0.5,
    )  # fmt: skip
    edit = "edit", KindSpec(
        explicit=True, value_help="the user's corrected full text", check=_text("edit"),
        signals=(SignalSpec("edit", 0.8),),
    )  # fmt: skip
    comment = "comment", KindSpec(
        explicit=True, value_help="free text", check=_text("comment"),
        signals=(SignalSpec("comment", 0.6),),
    )  # fmt: skip
    click = "click", KindSpec(
        explicit=False, value_help=", ".join(f"`{n}`" for n in _CLICK_NAMES), check=_click,
        signals=_CLICK_TARGETS,
    )  # fmt: skip
    dwell = "dwell", KindSpec(
        explicit=False, value_help="milliseconds visible, >= 0", check=_dwell,
        signals=(SignalSpec("dwell", 0.2),),
    )  # fmt: skip
    compare = "compare", KindSpec(
        explicit=True,
        value_help=", ".join(f"`{v}`" for v in COMPARE_VERDICTS)
        + " (this response against `other_response_id`)",
        check=_compare, signals=(SignalSpec("compare", 1.0),),
    )  # fmt: skip


def signals(explicit: bool) -> dict[str, SignalSpec]:
    """Every explicit (or implicit) signal of the table by name, in table order."""
    return {s.name: s for k in FeedbackKind if k.spec.explicit is explicit for s in k.spec.signals}


KIND_NAMES: frozenset[str] = frozenset(k.value for k in FeedbackKind)
