"""A request that sets no sampling parameters samples as the model's authors recommend."""

from __future__ import annotations

import json
from pathlib import Path

from livealign.models import SMOLLM2_SAMPLING, _recommend_sampling
from serving.chat import sampling_params
from serving.engine import sampling_defaults
from serving.protocol import ChatCompletionRequest

DEFAULTS = {"temperature": 0.2, "top_p": 0.9}


def request(**sampling: float) -> ChatCompletionRequest:
    body = {"model": "livealign", "messages": [{"role": "user", "content": "hi"}]}
    return ChatCompletionRequest.model_validate({**body, **sampling})


def test_unset_sampling_takes_the_models_defaults() -> None:
    params = sampling_params(request(), 10, 512, 16, DEFAULTS)
    assert (params.temperature, params.top_p) == (0.2, 0.9)


def test_what_a_request_sets_wins_and_the_rest_is_vllms() -> None:
    params = sampling_params(request(temperature=0.8), 10, 512, 16, DEFAULTS)
    assert (params.temperature, params.top_p) == (0.8, 1.0)
    greedy = sampling_params(request(temperature=0), 10, 512, 16, DEFAULTS)
    assert greedy.temperature == 0
    none = sampling_params(request(), 10, 512, 16, {})  # a model without defaults
    assert (none.temperature, none.top_p) == (1.0, 1.0)


def test_defaults_are_read_from_generation_config(tmp_path: Path) -> None:
    assert sampling_defaults(tmp_path) == {}
    (tmp_path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "temperature": 0.6, "top_k": 20, "top_p": None})
    )
    assert sampling_defaults(tmp_path) == {"temperature": 0.6, "top_k": 20}


def test_smollm2_gets_its_recommended_sampling_once(tmp_path: Path) -> None:
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    _recommend_sampling(tmp_path)
    written = json.loads(path.read_text())
    assert written == {"bos_token_id": 1, "eos_token_id": 2, **SMOLLM2_SAMPLING}
    before = path.stat().st_mtime_ns
    _recommend_sampling(tmp_path)
    assert path.stat().st_mtime_ns == before  # already there: not rewritten
    assert sampling_defaults(tmp_path) == {"temperature": 0.2, "top_p": 0.9}
