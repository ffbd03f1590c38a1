"""tests/unit/test_chat_template.py's check on SmolLM2-135M-Instruct, the model the stack
serves by default: serving's Engine.render and the trainer's prompt_ids give the same ids.

Here rather than in the unit set because its first run on a machine converts the GGUF into
the shared model cache (about 20 s on two cores); after that it takes a second."""

from __future__ import annotations

from pathlib import Path

import pytest

from livealign.models import prepare_smollm2
from serving.engine import Engine
from tests.unit.test_chat_template import (
    CACHE,
    CONVERSATIONS,
    assert_rendered_alike,
    serving_engine,
)


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return prepare_smollm2(CACHE)


@pytest.fixture(scope="module")
def smollm2_engine(smollm2: Path) -> Engine:
    return serving_engine(smollm2)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_serving_and_trainer_render_the_same_prompt_tokens_on_smollm2(
    smollm2: Path, smollm2_engine: Engine, name: str
) -> None:
    assert_rendered_alike(smollm2_engine, smollm2, CONVERSATIONS[name])
