"""The status page: ``GET /status`` (HTML, for people without Grafana) and its JSON,
``GET /v1/status``. Adapter versions over time with their gate metrics and live fused
score, the canary arms, feedback rates by kind, the fusion weights, the latest rounds.

- models.py: the JSON's typed body, ``StatusReport``.
- assemble.py: pure: what the sources hold -> the report.
- sources.py: the reads (registry folder, preference store), each part on its own.
- board.py: the page with its Content-Security-Policy, the report cached and made off
  the event loop, one at a time.
"""

from __future__ import annotations

from serving.config import ServingConfig
from serving.status.board import StatusBoard
from serving.status.models import StatusReport
from serving.status.sources import StatusSources
from trainer.registry import Registry

__all__ = ["StatusBoard", "StatusReport", "StatusSources", "board"]


def board(config: ServingConfig, registry: Registry | None) -> StatusBoard:
    """The status board of a replica: its registry, and the store its config names."""
    return StatusBoard(config.status, StatusSources(config.status, registry, config.store_url))
