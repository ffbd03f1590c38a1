"""The teacher's ``Sampler`` in the stack: the serving deployment, through a Ray Serve
deployment handle (``ChatServer.sample``, see serving.sampling).

Sampling goes through the serving engine on purpose: vLLM batches the k samples of
every prompt with the users' requests, with the very adapter files users are answered
with, where ``generate`` in the trainer would be many times slower on the same CPUs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serving.config import DEPLOYMENT_NAME
from streaming.events import ChatMessage
from trainer.teacher import Sample

# Waited past the deadline serving keeps, so that serving's own timeout answers first.
HANDLE_SLACK_S = 10.0


@dataclass(frozen=True)
class ServeSampler:
    """Picklable (names only): the handle is looked up where it is used, in the trainer
    actor's process."""

    app_name: str
    deployment: str = DEPLOYMENT_NAME

    def sample(
        self,
        adapter: str,
        prompts: Sequence[list[ChatMessage]],
        k: int,
        max_tokens: int,
        temperature: float,
        timeout_s: float,
    ) -> list[list[Sample]]:
        from ray import serve  # in the actor only: unit tests and the CLI never need Ray

        handle = serve.get_deployment_handle(self.deployment, app_name=self.app_name)
        body = {
            "adapter": adapter,
            "prompts": [[m.model_dump() for m in p] for p in prompts],
            "k": k,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "timeout_s": timeout_s,  # serving stops at it and aborts what it still generates
        }
        response = handle.sample.remote(body)
        try:
            out: dict[str, Any] = response.result(timeout_s=timeout_s + HANDLE_SLACK_S)
        except TimeoutError:
            response.cancel()  # serving never answered: cancelling aborts its generation
            raise
        return [
            [Sample(s["text"], s["finish_reason"]) for s in per_prompt]
            for per_prompt in out["samples"]
        ]
