"""Create LiveAlign's topics (idempotently) on whatever Kafka we are pointed at."""

from __future__ import annotations

import contextlib
import logging

from kafka.admin import KafkaAdminClient, NewTopic
from kafka.errors import TopicAlreadyExistsError

from streaming.events import (
    TOPIC_DEADLETTER,
    TOPIC_DECISIONS,
    TOPIC_FEEDBACK,
    TOPIC_INTERACTIONS,
    TOPIC_PREFERENCES,
)

log = logging.getLogger(__name__)
TOPICS = (
    TOPIC_INTERACTIONS, TOPIC_FEEDBACK, TOPIC_PREFERENCES, TOPIC_DECISIONS, TOPIC_DEADLETTER,
)  # fmt: skip


def ensure_topics(bootstrap: str, partitions: int = 4, replication: int = 1) -> None:
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap.split(","),
        client_id="livealign-admin",
        request_timeout_ms=10_000,
    )
    try:
        existing = set(admin.list_topics())
        missing = [t for t in TOPICS if t not in existing]
        if missing:
            new = [NewTopic(t, partitions, replication) for t in missing]
            with contextlib.suppress(TopicAlreadyExistsError):  # another process won the race
                admin.create_topics(new, timeout_ms=10_000)
            log.info("created topics %s with %d partitions", missing, partitions)
    finally:
        admin.close()
