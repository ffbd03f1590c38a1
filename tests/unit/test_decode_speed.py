"""Decode speed, what livealign_chat_decode_tokens_per_second observes per answer."""

from __future__ import annotations

import pytest

from serving.chat import decode_speed


def test_tokens_after_the_first_per_second_after_it() -> None:
    assert decode_speed(11, 2.0) == pytest.approx(5.0)  # 10 tokens in the 2 s after TTFT


@pytest.mark.parametrize(("tokens", "seconds"), [(0, 1.0), (1, 1.0), (5, 0.0), (5, -0.1)])
def test_nothing_to_time_is_not_observed(tokens: int, seconds: float) -> None:
    assert decode_speed(tokens, seconds) is None
