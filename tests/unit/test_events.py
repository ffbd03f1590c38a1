"""streaming.events, the contract with clients: feedback values accepted or refused (with the
field named, as serving.feedback describes it) and the committed JSON schemas."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.feedback import describe
from streaming.events import SCHEMA_DIR, SCHEMAS, FeedbackIn, write_schemas


def _fb(kind: str, value: object) -> FeedbackIn:
    return FeedbackIn.model_validate(
        {"response_id": "r", "feedback_token": "t", "kind": kind, "value": value}
    )


@pytest.mark.parametrize(
    ("kind", "value"),
    [("thumb", 1), ("thumb", -1), ("rating", 3), ("rating", 5.0), ("edit", "x"),
     ("comment", "ok"), ("click", "link"), ("dwell", 0)],
)  # fmt: skip
def test_feedback_values_accepted(kind: str, value: object) -> None:
    assert _fb(kind, value).value == value


@pytest.mark.parametrize(
    ("kind", "value", "message"),
    [("thumb", 0, "thumb is +1 or -1"), ("rating", 2.5, "integer from 1 to 5"),
     ("edit", "", "non-empty"), ("click", "hover", "one of copy"), ("dwell", -5, "dwell"),
     ("edit", "x" * 40_000, "at most")],
)  # fmt: skip
def test_feedback_values_refused_with_the_field_named(
    kind: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError) as info:
        _fb(kind, value)
    text = describe(info.value)
    assert text.startswith("value:") and message in text


def test_unknown_kind_names_kind() -> None:
    with pytest.raises(ValidationError) as info:
        _fb("smile", 1)
    assert describe(info.value).startswith("kind:")


def test_committed_json_schemas_match_the_models(tmp_path: Path) -> None:
    fresh = {p.name: p.read_text() for p in write_schemas(tmp_path)}
    committed = {p.name: p.read_text() for p in SCHEMA_DIR.glob("*.json")}
    assert fresh == committed, "run `livealign schemas` and commit the result"
    assert len(fresh) == len(SCHEMAS)
