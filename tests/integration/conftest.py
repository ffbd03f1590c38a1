"""Integration tests: one embedded broker, one Ray + Serve + vLLM stack per test session,
serving the tiny random Llama (speed matters here, not answer quality), and the helpers
that read what the stack wrote to its topics. One throwaway PostgreSQL server too, started
for the first test that asks for it (the store's tests on PostgreSQL).

Every test under this folder carries the ``integration`` marker, applied here once: so
``pytest -m "not integration"`` and ``pytest tests/unit`` select the same fast set."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from openai import OpenAI

from livealign.config import Settings
from livealign.stack import LocalStack
from streaming.broker import free_port
from streaming.events import TOPIC_FEEDBACK, TOPIC_INTERACTIONS, FeedbackEvent, InteractionEvent
from tests.integration.postgres import PostgresNotInstalled, PostgresServer
from trainer.registry import Registry

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Called with the whole session's items (unit ones too, in a full run): mark only ours.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    settings = Settings(
        home=tmp_path_factory.mktemp("home"),
        model="tiny",
        port=free_port(),
        partitions=2,
        max_model_len=512,
        default_max_tokens=16,
        settle_s=2.0,  # feedback windows close within seconds, so records come soon
        trainer=False,  # rounds are driven by the trainer tests themselves
        canary=False,  # so is the canary controller (a test starts its own, sized for seconds)
        monitoring=True,  # Prometheus, scraping every part (test_monitoring)
        scrape_interval_s=1.0,
        # The browser widget's tests embed it on a page of another origin: this one.
        feedback_origins=[f"http://127.0.0.1:{free_port()}"],
    )
    with LocalStack(settings) as running:
        yield running


@pytest.fixture(scope="session")
def client(stack: LocalStack) -> OpenAI:
    return OpenAI(base_url=f"{stack.url}/v1", api_key="unused", timeout=120, max_retries=0)


@pytest.fixture(scope="session")
def http(stack: LocalStack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.url, timeout=120) as c:
        yield c


@pytest.fixture
def send(stack: LocalStack) -> Iterator[Callable[[InteractionEvent | FeedbackEvent], None]]:
    """Put events straight on the topics, as serving would (keyed by conversation)."""
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, acks="all")

    def _send(event: InteractionEvent | FeedbackEvent) -> None:
        topic = TOPIC_INTERACTIONS if isinstance(event, InteractionEvent) else TOPIC_FEEDBACK
        producer.send(
            topic, key=event.conversation_id.encode(), value=event.model_dump_json().encode()
        )

    yield _send
    producer.flush(10)
    producer.close()


@pytest.fixture(scope="session")
def registry(stack: LocalStack) -> Registry:
    return Registry(stack.settings.registry_dir)


@pytest.fixture(scope="session")
def admin_key(stack: LocalStack) -> str:
    key = stack.settings.serving_config(Path("."), "").admin_key
    assert key is not None
    return key.get_secret_value()


@pytest.fixture(scope="session")
def admin(admin_key: str) -> dict[str, str]:
    """The admin API's headers."""
    return {"Authorization": f"Bearer {admin_key}"}


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """Not skipped when PostgreSQL is missing: CI must run these tests."""
    try:
        server = PostgresServer()
    except PostgresNotInstalled as exc:
        raise pytest.fail.Exception(str(exc), pytrace=False) from None
    with server:
        yield server


@pytest.fixture
def postgres_url(postgres: PostgresServer) -> str:
    """A new, empty database on the PostgreSQL server: its SQLAlchemy URL."""
    return postgres.create_database()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A new preference store's URL, on each backend in turn."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'prefs.sqlite'}"
    return str(request.getfixturevalue("postgres_url"))


def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[dict[str, Any]]], bool],
    timeout: float = 60.0,
) -> list[dict[str, Any]]:
    """Every record of ``topic`` from the beginning, polled until ``until(records)``."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False,
        request_timeout_ms=10_000,
    )  # fmt: skip
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        consumer.assign([TopicPartition(topic, p) for p in sorted(partitions)])
        consumer.seek_to_beginning()
        records: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for r in batch:
                    record = json.loads(r.value)
                    record["_key"] = r.key.decode() if r.key else None
                    records.append(record)
            if until(records):
                break
        return records
    finally:
        consumer.close()


def with_ids(field: str, wanted: set[str]) -> Callable[[list[dict[str, Any]]], bool]:
    return lambda records: wanted <= {r.get(field) for r in records}
