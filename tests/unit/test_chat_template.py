"""Serving and training render a conversation to the same tokens.

trainer/train.py promises to format chats "exactly as serving renders" them, so that the
model is trained on the token sequences it later continues. Serving renders in
``Engine.render`` (serving/engine.py): the ids it hands vLLM as ``prompt_token_ids``, which
vLLM takes as they are (no second rendering, no special tokens added). The trainer renders in
``prompt_ids`` (the context its gate scores) and puts the same context before every answer
it trains on (``completion_ids``, TRL's prompt/answer split). Both are called here as they
are, from an OpenAI-style request body, on the tiny model's folder (SmolLM2's tokenizer and
chat template); tests/integration/test_chat_template_smollm2.py does the same on SmolLM2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import serving.engine
from livealign.models import prepare_tiny
from serving.config import EngineConfig
from serving.engine import Engine
from serving.protocol import ChatCompletionRequest
from streaming.events import ChatMessage
from trainer.train import completion_ids, load_tokenizer, prompt_ids

CACHE = Path.home() / ".cache" / "livealign" / "models"

CONVERSATIONS: dict[str, list[dict[str, Any]]] = {
    "system-and-user": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Is the sky blue?"},
    ],
    # No system message: SmolLM2's template puts in its own default one.
    "user-only": [{"role": "user", "content": "Say hello."}],
    "multi-turn": [
        {"role": "system", "content": "You are a patient cook."},
        {"role": "user", "content": "How long do I boil an egg?"},
        {"role": "assistant", "content": "About nine minutes for a hard one."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "a soft one?"}],
        },
    ],
    "non-ascii": [
        {"role": "user", "content": "Grüße aus Köln! Wie heißt „Straße“ auf 日本語? 🍣"},
        {"role": "assistant", "content": "「道」です — naïve café, Ελληνικά, עברית."},
        {"role": "user", "content": "Merci ! Ça va ? 👍🏽\n\n\tok  "},
    ],
}


class _NoAsyncLLM:
    """Stands in for vLLM's AsyncLLM: rendering never touches the engine."""

    @classmethod
    def from_engine_args(cls, args: object, stat_loggers: object = None) -> _NoAsyncLLM:
        return cls()


def serving_engine(model_dir: Path) -> Engine:
    """serving's Engine, built by its own __init__ (so with the tokenizer it loads), minus
    the vLLM engine itself."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(serving.engine, "AsyncLLM", _NoAsyncLLM)
        mp.setenv("VLLM_CPU_KVCACHE_SPACE", "1")  # Engine.__init__ sets it if unset
        return Engine(EngineConfig(model_path=str(model_dir)))


def assert_rendered_alike(engine: Engine, model_dir: Path, body: list[dict[str, Any]]) -> None:
    """The ids serving feeds the engine for a request with these messages are the ids the
    trainer renders for the same conversation as it reaches the trainer."""
    request = ChatCompletionRequest.model_validate({"model": "livealign", "messages": body})
    served = engine.render(request.chat_messages())
    # The conversation as serving logs it and the preference store keeps it.
    stored = [ChatMessage.model_validate_json(m.model_dump_json()) for m in request.chat_messages()]
    tokenizer = load_tokenizer(model_dir)

    def show(ids: list[int]) -> str:
        return repr(tokenizer.decode(ids, clean_up_tokenization_spaces=False))

    trained = prompt_ids(tokenizer, stored)
    assert trained == served, f"trainer {show(trained)} != serving {show(served)}"
    head, _ = completion_ids(tokenizer, stored, "Yes, it is.")
    assert head == served, f"trained context {show(head)} != serving {show(served)}"

    # Neither side lost the generation prompt or added a token of its own (a second BOS,
    # say): the ids are exactly the template's text, which ends where the answer starts.
    messages = [m.model_dump() for m in stored]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bare = tokenizer.apply_chat_template(messages, tokenize=False)
    assert text.startswith(bare) and text != bare, "the template has no generation prompt"
    assert tokenizer.decode(served, clean_up_tokenization_spaces=False) == text


@pytest.fixture(scope="module")
def tiny() -> Path:
    return prepare_tiny(CACHE)


@pytest.fixture(scope="module")
def tiny_engine(tiny: Path) -> Engine:
    return serving_engine(tiny)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_serving_and_trainer_render_the_same_prompt_tokens(
    tiny: Path, tiny_engine: Engine, name: str
) -> None:
    assert_rendered_alike(tiny_engine, tiny, CONVERSATIONS[name])
