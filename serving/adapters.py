"""Which LoRA adapter serves, and swapping it without dropping a request.

A new version is loaded into vLLM under its own name (``livealign@4``), never reloaded
in place: vLLM's prefix cache is keyed by adapter name and would go stale. New requests
switch to it at once; requests in flight on the old version finish on it; then the old
one is unloaded. A version whose files fail their checksums or do not fit the base model
is refused, and the current one keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vllm.lora.request import LoRARequest

from monitoring import metrics as m
from serving.chat import BASE_ADAPTER, STABLE_ARM, Route
from serving.engine import Engine
from trainer.registry import Registry, RegistryError

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One adapter loaded in the engine, with the requests using it."""

    ref: str
    lora: LoRARequest | None
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class AdapterManager:
    def __init__(
        self, engine: Engine, registry: Registry | None, drain_timeout_s: float = 300.0
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.drain_timeout_s = drain_timeout_s
        self.current = Slot(BASE_ADAPTER, None)
        self.current.idle.set()
        self.refused: dict[str, str] = {}  # ref -> why; not retried until it changes
        self._next_id = 1
        self._lock = asyncio.Lock()
        self._base_config: dict[str, Any] = json.loads(
            (Path(engine.config.model_path) / "config.json").read_text()
        )
        m.SERVED_ADAPTER.labels(BASE_ADAPTER).set(1)

    def route(self) -> tuple[Route, Slot]:
        """The adapter for a new request; release the slot when the request is over."""
        slot = self.current
        slot.acquire()
        return Route(adapter=slot.ref, arm=STABLE_ARM, lora=slot.lora), slot

    async def swap_to(self, ref: str) -> None:
        """Serve ``ref`` (or ``"base"``) from now on. Raises ``RegistryError`` if refused."""
        async with self._lock:
            if ref == self.current.ref:
                return
            start = time.perf_counter()
            try:
                new = await self._load(ref)
            except RegistryError as exc:
                self.refused[ref] = str(exc)
                m.ADAPTER_SWAPS.labels("refused").inc()
                log.error("adapter %s refused, %s keeps serving: %s", ref, self.current.ref, exc)
                raise
            old, self.current = self.current, new
            m.SERVED_ADAPTER.labels(old.ref).set(0)
            m.SERVED_ADAPTER.labels(new.ref).set(1)
            log.info("now serving %s (was %s); draining %d in flight", ref, old.ref, old.in_flight)
        await self._retire(old)
        m.ADAPTER_SWAPS.labels("ok").inc()
        m.SWAP_SECONDS.observe(time.perf_counter() - start)

    async def _load(self, ref: str) -> Slot:
        if ref == BASE_ADAPTER:
            slot = Slot(BASE_ADAPTER, None)
            slot.idle.set()
            return slot
        if self.registry is None:
            raise RegistryError("no adapter registry is configured")
        manifest = self.registry.verify(ref)  # every file against its sha256
        self.registry.check_compatible(ref, self._base_config)
        lora = LoRARequest(
            lora_name=manifest.ref,
            lora_int_id=self._next_id,
            lora_path=str(self.registry.path(ref)),
        )
        self._next_id += 1
        try:
            if not await self.engine.llm.add_lora(lora):
                raise RegistryError(f"vLLM did not load {ref}")
        except RegistryError:
            raise
        except Exception as exc:  # vLLM's own validation of the adapter files
            raise RegistryError(f"vLLM could not load {ref}: {exc}") from exc
        slot = Slot(manifest.ref, lora)
        slot.idle.set()
        return slot

    async def _retire(self, old: Slot) -> None:
        """Unload ``old`` once its last request finished (or after the drain timeout)."""
        if old.lora is None:
            return
        try:
            await asyncio.wait_for(old.idle.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning("%s: %d requests still running; unloading", old.ref, old.in_flight)
        await self.engine.llm.remove_lora(old.lora.lora_int_id)

    async def follow_registry(self, stop: asyncio.Event, every_s: float = 2.0) -> None:
        """Serve whatever the registry marks stable (published by the trainer, or set by
        an operator through the admin API on any replica)."""
        while not stop.is_set():
            try:
                wanted = self.registry.state().stable if self.registry else None
                wanted = wanted or BASE_ADAPTER
                if wanted != self.current.ref and wanted not in self.refused:
                    await self.swap_to(wanted)
            except RegistryError:
                pass  # logged and counted in swap_to; keep serving the current one
            except Exception:
                log.exception("registry check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
