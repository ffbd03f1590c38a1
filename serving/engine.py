"""The vLLM engine a replica wraps: vLLM's ``AsyncLLM``, plus the chat template."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from transformers import AutoTokenizer
from vllm import SamplingParams
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.lora.request import LoRARequest
from vllm.outputs import RequestOutput
from vllm.v1.engine.async_llm import AsyncLLM
from vllm.v1.metrics.loggers import PrometheusStatLogger

from serving.config import EngineConfig
from serving.protocol import APIError
from streaming.events import ChatMessage


class Engine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        # vLLM's CPU backend sizes its KV cache from the environment, not from args.
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(config.kv_cache_gib))
        args = AsyncEngineArgs(
            model=config.model_path,
            served_model_name=[config.served_model_name],
            dtype=config.dtype,
            max_model_len=config.max_model_len,
            max_num_seqs=config.max_num_seqs,
            enable_lora=config.enable_lora,
            max_loras=config.max_loras,
            max_lora_rank=config.max_lora_rank,
            enforce_eager=config.enforce_eager,
            # Its periodic stats log line stays off; its Prometheus metrics, when wanted,
            # come from a stat logger given by name (vLLM turns stats on for it alone).
            disable_log_stats=True,
        )
        stat_loggers = [PrometheusStatLogger] if config.engine_metrics else None
        self.llm = AsyncLLM.from_engine_args(args, stat_loggers=stat_loggers)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(config.model_path)
        self.eos_token_id: int | None = self.tokenizer.eos_token_id
        self.sampling_defaults = sampling_defaults(Path(config.model_path))

    def render(self, messages: list[ChatMessage]) -> list[int]:
        """Token ids of the chat prompt, ending where the assistant's answer starts."""
        try:
            text = self.tokenizer.apply_chat_template(
                [m.model_dump() for m in messages], add_generation_prompt=True, tokenize=False
            )
        except TemplateError as exc:
            # A template may refuse a conversation (roles out of order, a role it lacks):
            # the request's fault, as vLLM's own server answers it.
            raise APIError(
                400, f"messages: the model's chat template refuses them: {exc}", param="messages"
            ) from exc
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(
        self,
        prompt_ids: list[int],
        params: SamplingParams,
        request_id: str,
        lora: LoRARequest | None = None,
    ) -> AsyncIterator[RequestOutput]:
        return self.llm.generate(
            {"prompt_token_ids": prompt_ids}, params, request_id, lora_request=lora
        )

    async def abort(self, request_id: str) -> None:
        await self.llm.abort(request_id)

    async def check_health(self) -> None:
        await self.llm.check_health()

    def shutdown(self) -> None:
        self.llm.shutdown()


# What a request that sets none of them samples with: the model's own defaults, as its
# authors ship them in generation_config.json (vLLM's own server does the same).
SAMPLING_KEYS = ("temperature", "top_p", "top_k")


def sampling_defaults(model_dir: Path) -> dict[str, float]:
    """The sampling values in the model's generation_config.json (none: vLLM's)."""
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return {}
    config = json.loads(path.read_text())
    return {key: config[key] for key in SAMPLING_KEYS if config.get(key) is not None}
