"""Reading what the status page shows, from where it already is: the registry folder
(state.json, the manifests, the canary controller's decisions log, the trainer's rounds
log) and the preference store (score buckets, the canary arms' outcomes, feedback counts,
the fusion weights the stream processor saves with its state).

The processor runs in a process of its own; its weights are read from the store, where
it saves them in the transaction that saves the state they come from, rather than from
its metrics endpoint: every replica reads the store already named in its config, the
numbers survive a processor restart, and no address or fusion config has to be shared.

Each part is read on its own. One that fails (a store down, a corrupt file) is logged and
named in the report's problems and the rest is shown. A problem names the part and the
error's type only: the page is public, and messages can hold paths or URLs.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from serving.canary.outcomes import summarize
from serving.config import StatusConfig
from serving.status.assemble import Sources, charted, window
from serving.status.models import Decision, Fusion
from streaming.events import BASE_ADAPTER
from streaming.store import PreferenceStore
from trainer.config import ROUNDS_LOG
from trainer.registry import Registry
from trainer.registry.files import last_lines

log = logging.getLogger(__name__)
T = TypeVar("T")


class StatusSources:
    def __init__(
        self, config: StatusConfig, registry: Registry | None, store_url: str | None
    ) -> None:
        self.config = config
        self.registry = registry
        self.store_url = store_url
        self._store: PreferenceStore | None = None  # opened when first needed

    def read(self, replica: Mapping[str, Any], now_ms: int) -> Sources:
        src = Sources(now_ms=now_ms, replica=replica)
        if (registry := self.registry) is not None:
            _part(src, "registry", lambda: self._registry(registry, src))
            _part(src, "canary decisions", lambda: _decision(registry, src))
            _part(src, "training rounds", lambda: self._rounds(registry, src))
        if (store := _part(src, "preference store", self._open)) is not None:
            _part(src, "live scores", lambda: self._scores(store, src))
            _part(src, "canary arms", lambda: _arms(store, src))
            _part(src, "feedback", lambda: self._feedback(store, src))
            _part(src, "fusion weights", lambda: _fusion(store, src))
        return src

    # --- the registry folder --------------------------------------------------------------
    def _registry(self, registry: Registry, src: Sources) -> None:
        src.state = registry.state()
        src.manifests = registry.versions()[::-1][: self.config.max_versions]

    def _rounds(self, registry: Registry, src: Sources) -> None:
        path = registry.root / ROUNDS_LOG
        if path.is_file() and self.config.max_rounds:
            src.rounds = [json.loads(line) for line in last_lines(path, self.config.max_rounds)]

    # --- the preference store ---------------------------------------------------------------
    def _open(self) -> PreferenceStore | None:
        """The store, opened at first use: a replica never waits for it to start."""
        if self._store is None and self.store_url is not None:
            self._store = PreferenceStore(self.store_url)
        return self._store

    def _scores(self, store: PreferenceStore, src: Sources) -> None:
        since, bucket_ms = window(self.config, src.now_ms)
        src.buckets = store.score_buckets(charted(src.manifests), since, bucket_ms)

    def _feedback(self, store: PreferenceStore, src: Sources) -> None:
        since = src.now_ms - int(self.config.feedback_window_s * 1000)
        src.feedback = store.feedback_on_settled(since)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _decision(registry: Registry, src: Sources) -> None:
    last = registry.decisions(last=1)
    src.decision = Decision.model_validate(last[-1]) if last else None


def _arms(store: PreferenceStore, src: Sources) -> None:
    state = src.state
    if state is None or state.canary is None or state.rollout is None:
        return
    stable = state.stable or BASE_ADAPTER
    rows = store.outcomes_since([state.canary, stable], state.rollout.started_ms)
    # No conversation counts: they are for the controller's sample-ratio check only.
    src.arms = summarize(rows, state.canary, stable, {})


def _fusion(store: PreferenceStore, src: Sources) -> None:
    saved = store.fusion_weights()
    src.fusion = None if saved is None else Fusion.model_validate(saved)


def _part(src: Sources, name: str, read: Callable[[], T]) -> T | None:
    """One part's read; a failure becomes a problem (and None), and the rest goes on."""
    try:
        return read()
    except Exception as exc:  # whatever it is, the other parts are still worth showing
        log.warning("status page: %s unreadable", name, exc_info=True)
        src.problems.append(f"{name}: unreadable ({type(exc).__name__}; see the serving log)")
        return None
