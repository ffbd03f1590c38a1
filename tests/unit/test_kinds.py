"""The table of feedback kinds: everything that depends on a kind is derived from it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from streaming.events import FeedbackEvent, FeedbackIn
from streaming.fusion import Fuser, FusionConfig
from streaming.kinds import FeedbackKind, signals

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_contract_takes_exactly_the_kinds_of_the_table() -> None:
    for model in (FeedbackIn, FeedbackEvent):
        enum = model.model_json_schema()["$defs"]["FeedbackKind"]["enum"]
        assert enum == [k.value for k in FeedbackKind]


def test_every_signal_is_weighed_by_default_and_reported() -> None:
    cfg = FusionConfig()
    assert cfg.explicit_weights == {n: s.weight for n, s in signals(explicit=True).items()}
    assert cfg.implicit_prior_weights == {n: s.weight for n, s in signals(explicit=False).items()}
    every = set(signals(explicit=True)) | set(signals(explicit=False))
    for row in Fuser(cfg).weights().values():  # what livealign_fusion_weight exports
        assert set(row) == every


@pytest.mark.parametrize("table", ["explicit_weights", "implicit_prior_weights", "click_values"])
def test_a_config_without_a_weight_for_a_signal_is_refused(table: str) -> None:
    full = getattr(FusionConfig(), table)
    dropped = sorted(full)[0]
    with pytest.raises(ValidationError, match=f"{table} lacks.*{dropped}"):
        FusionConfig(**{table: {k: v for k, v in full.items() if k != dropped}})
    with pytest.raises(ValidationError, match=r"unknown signals.*smile"):
        FusionConfig(**{table: {**full, "smile": 0.5}})


def test_only_kinds_with_a_scale_are_normalized_per_rater() -> None:
    fuser = Fuser(FusionConfig())
    from streaming.fusion import Signal

    for kind in FeedbackKind:
        for spec in kind.spec.signals:
            s = Signal(spec.name, 1.0, 1.0, "rater-1", kind.spec.explicit)
            changed = fuser.observe(s).value != 1.0 or "rater-1" in fuser.raters.stats
            assert changed == (kind.spec.scale_prior_var is not None), spec.name
            fuser.raters.stats.clear()


def test_readme_kinds_table_matches_the_table() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|$", README.read_text(), re.MULTILINE)
    documented = {kind: text for kind, text in rows if kind in {k.value for k in FeedbackKind}}
    assert documented == {k.value: k.spec.value_help for k in FeedbackKind}
