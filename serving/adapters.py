"""Which LoRA adapters serve, and swapping them without dropping a request.

Two slots: ``stable``, which answers by default, and ``canary``, the version on trial,
which answers the conversations (or users) that ``serving.canary.assign`` puts on it at
the registry's ``canary_weight``. Both follow the registry's state.json.

A new version is loaded into vLLM under its own name (``livealign@4``), never reloaded
in place: vLLM's prefix cache is keyed by adapter name and would go stale. New requests
switch to it at once; requests in flight on the old version finish on it; then the old
one is unloaded. A promoted canary moves into the stable slot as it is (it is loaded
already, and its conversations go on on the same adapter). A version whose files fail
their checksums or do not fit the base model is refused: as stable, the current one keeps
serving; as canary, nobody is routed to it.
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
from serving.canary import assign
from serving.chat import BASE_ADAPTER, CANARY_ARM, PINNED_ARM, STABLE_ARM, Route
from serving.engine import Engine
from serving.protocol import APIError
from trainer.registry import Registry, RegistryError, RegistryState

log = logging.getLogger(__name__)


@dataclass
class Slot:
    """One adapter loaded in the engine, with the requests using it."""

    ref: str
    lora: LoRARequest | None
    in_flight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.idle.set()  # nothing runs on a slot yet

    def acquire(self) -> None:
        self.in_flight += 1
        self.idle.clear()

    def release(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self.idle.set()


class AdapterManager:
    def __init__(
        self,
        engine: Engine,
        registry: Registry | None,
        secret: bytes,
        drain_timeout_s: float = 300.0,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.secret = secret  # keys the canary assignment's hash
        self.drain_timeout_s = drain_timeout_s
        self.stable = Slot(BASE_ADAPTER, None)
        self.canary: Slot | None = None
        self.canary_weight = 0.0  # as this replica routes it
        self.refused: dict[str, str] = {}  # ref -> why; not retried until it changes
        self._next_id = 1
        self._lock = asyncio.Lock()  # one change of the slots at a time
        self._base_config: dict[str, Any] = json.loads(
            (Path(engine.config.model_path) / "config.json").read_text()
        )
        _routed(self.stable, True)
        # At 0 from the start: increase() misses a first refusal whose series appears at 1.
        for result in ("ok", "refused"):
            m.ADAPTER_SWAPS.labels(result)

    # --- routing ----------------------------------------------------------------------
    def route(self, key: str, pin: str | None = None) -> tuple[Route, Slot]:
        """The adapter for a new request of unit ``key`` (``assign.unit_key``), or of the
        arm an operator pinned; release the slot when the request is over."""
        slot, arm = self._pick(key, pin)
        slot.acquire()
        return Route(adapter=slot.ref, arm=arm, lora=slot.lora), slot

    def _pick(self, key: str, pin: str | None) -> tuple[Slot, str]:
        canary = self.canary
        if pin == CANARY_ARM:
            if canary is None:
                raise APIError(409, "no canary is loaded to pin to", code="no_canary")
            return canary, PINNED_ARM
        if pin == STABLE_ARM:
            return self.stable, PINNED_ARM
        if canary is not None and assign.on_canary(
            self.secret, canary.ref, key, self.canary_weight
        ):
            return canary, CANARY_ARM
        return self.stable, STABLE_ARM

    def hold(self, ref: str) -> Slot:
        """The loaded slot of version ``ref`` (the stable or the canary one; the base model
        always), held so that it is not unloaded while in use: release it when done. Not a
        route: no arm is picked and nothing counts as either arm's traffic."""
        found = [s for s in (self.stable, self.canary) if s is not None and s.ref == ref]
        if not found and ref != BASE_ADAPTER:
            raise APIError(
                409,
                f"{ref} is not loaded on this replica (stable {self.stable.ref}, canary "
                f"{self.canary_ref})",
                code="adapter_not_loaded",
            )
        slot = found[0] if found else Slot(BASE_ADAPTER, None)  # the base is always there
        slot.acquire()
        return slot

    @property
    def canary_ref(self) -> str | None:
        return self.canary.ref if self.canary else None

    def loaded(self) -> dict[str, Any]:
        """What this replica serves now. ``lora_ids``: vLLM's id of each adapter, new at
        every load (so a promoted canary keeping its id was not reloaded)."""
        slots = (self.stable, self.canary)
        return {
            "stable": self.stable.ref,
            "canary": self.canary_ref,
            "canary_weight": self.canary_weight,
            "refused": dict(self.refused),
            "lora_ids": {s.ref: s.lora.lora_int_id for s in slots if s is not None and s.lora},
        }

    # --- following the registry -------------------------------------------------------
    async def follow_registry(self, stop: asyncio.Event, every_s: float = 2.0) -> None:
        """Serve whatever the registry says (published by the trainer, moved on by the
        canary controller, or set by an operator through the admin API on any replica)."""
        while not stop.is_set():
            try:
                await self.sync()
            except RegistryError as exc:  # state.json unreadable: keep serving what is loaded
                log.warning("registry state not followed: %s", exc)
            except Exception:
                log.exception("registry check failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)

    async def sync(self) -> None:
        """One look at state.json: its stable, then its canary at its weight (stable first,
        so that a promoted canary is moved over, not dropped). Read under the lock: a sync
        that read an older state can never undo a newer one applied meanwhile (by the
        admin API's sync, say) and send a conversation back and forth."""
        start = time.perf_counter()
        async with self._lock:
            state = self.registry.state() if self.registry else RegistryState()
            old_stable = await self._follow_stable(state.stable or BASE_ADAPTER)
            old_canary = await self._follow_canary(state.canary, state.canary_weight)
        # Drained with the lock released: a long request must not hold up the next change.
        await asyncio.gather(self._swapped(old_stable, start), self._retire(old_canary))

    async def swap_to(self, ref: str) -> None:
        """Serve ``ref`` (or ``"base"``) as stable from now on. Raises ``RegistryError``
        if refused."""
        start = time.perf_counter()
        async with self._lock:
            old = await self._replace_stable(ref)
        await self._swapped(old, start)

    async def _follow_stable(self, wanted: str) -> Slot | None:
        if wanted in self.refused:
            return None
        try:
            return await self._replace_stable(wanted)
        except RegistryError:  # logged and counted in _admit; the current one keeps serving
            return None

    async def _replace_stable(self, ref: str) -> Slot | None:
        """Put ``ref`` in the stable slot (the canary's adapter if it is the canary's
        ref); the slot it replaced, to retire, or None if ``ref`` is stable already."""
        if ref == self.stable.ref:
            return None
        if self.canary is not None and ref == self.canary.ref:
            new = self._take_canary(self.canary)
        else:
            new = await self._admit(ref, "stable")
        old, self.stable = self.stable, new
        _routed(old, False)
        _routed(new, True)
        log.info("stable is %s (was %s); draining %d in flight", ref, old.ref, old.in_flight)
        return old

    async def _swapped(self, old: Slot | None, start: float) -> None:
        """Retire the stable slot a swap replaced, and count the swap."""
        if old is None:
            return
        await self._retire(old)
        m.ADAPTER_SWAPS.labels("ok").inc()
        m.SWAP_SECONDS.observe(time.perf_counter() - start)

    async def _follow_canary(self, wanted: str | None, weight: float) -> Slot | None:
        """Load the registry's canary, drop one it no longer names (returned, to retire),
        route at its weight."""
        current = self.canary
        old = self._take_canary(current) if current and current.ref != wanted else None
        if old is not None:
            _routed(old, False)
            log.info("canary %s dropped; draining %d in flight", old.ref, old.in_flight)
        if wanted is not None and self.canary is None and wanted not in self.refused:
            with contextlib.suppress(RegistryError):  # logged and counted in _admit
                self.canary = await self._admit(wanted, "canary")
                _routed(self.canary, True)
                log.info("canary %s loaded", wanted)
        if self.canary is not None:
            self.canary_weight = weight
            m.CANARY_WEIGHT.labels(self.canary.ref).set(weight)
        return old

    def _take_canary(self, slot: Slot) -> Slot:
        """Empty the canary slot, which holds ``slot``: no new request goes to it."""
        self.canary, self.canary_weight = None, 0.0
        m.CANARY_WEIGHT.labels(slot.ref).set(0)
        return slot

    # --- loading and unloading --------------------------------------------------------
    async def _admit(self, ref: str, role: str) -> Slot:
        """``_load``, recording a refusal (not retried until the registry names another)."""
        try:
            return await self._load(ref)
        except RegistryError as exc:
            self.refused[ref] = str(exc)
            m.ADAPTER_SWAPS.labels("refused").inc()
            log.error("adapter %s refused as %s: %s", ref, role, exc)
            raise

    async def _load(self, ref: str) -> Slot:
        if ref == BASE_ADAPTER:
            return Slot(BASE_ADAPTER, None)
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
        m.LOADED_ADAPTER.labels(manifest.ref).set(1)
        return Slot(manifest.ref, lora)

    async def _retire(self, old: Slot | None) -> None:
        """Unload ``old`` once its last request finished (or after the drain timeout)."""
        if old is None or old.lora is None:
            return
        try:
            await asyncio.wait_for(old.idle.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning("%s: %d requests still running; unloading", old.ref, old.in_flight)
        await self.engine.llm.remove_lora(old.lora.lora_int_id)
        m.LOADED_ADAPTER.labels(old.ref).set(0)


def _routed(slot: Slot, on: bool) -> None:
    """Whether new requests may go to ``slot``'s version (livealign_served_adapter)."""
    m.SERVED_ADAPTER.labels(slot.ref).set(int(on))
