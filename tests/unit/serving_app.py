"""The real ASGI app of ``serving.app`` with its routes answered by a ChatServer built on
fakes: an engine that renders one token per word and answers "hello there", a producer that
acknowledges at once, a registry and a preference store in a temporary folder. No Ray, no
vLLM engine, no broker: what is tested is everything between the socket and the engine
(middleware, validation, routes, error rendering, the OpenAPI document).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from pydantic import SecretStr

from serving import app as serving_app
from serving import auth
from serving.adapters import AdapterManager
from serving.config import EngineConfig, ServingConfig, StatusConfig
from serving.feedback import FeedbackDesk
from serving.limits import LIMITS
from serving.status import board as status_board
from streaming.producer import ProducerConfig
from trainer.registry import Registry

ADMIN_KEY = "admin-key-for-tests"
SECRET = b"feedback-secret"
MODEL = "livealign"


class FakeEngine:
    """Renders one token per word; answers "hello there" in two deltas, cut at length."""

    def __init__(self, model_dir: Path) -> None:
        self.config = SimpleNamespace(model_path=str(model_dir), max_model_len=512)
        self.sampling_defaults: dict[str, float] = {}
        self.calls: list[Any] = []

    def render(self, messages: list[Any]) -> list[int]:
        return [1] * max(1, len(" ".join(m.content for m in messages).split()))

    async def generate(
        self, ids: list[int], params: Any, request_id: str, lora: Any = None
    ) -> AsyncIterator[Any]:
        self.calls.append(params)
        for text, finish in (("hello", None), (" there", "length")):
            yield SimpleNamespace(
                outputs=[SimpleNamespace(text=text, token_ids=[1], finish_reason=finish)]
            )

    async def abort(self, request_id: str) -> None:
        pass

    async def check_health(self) -> None:
        pass

    def shutdown(self) -> None:
        pass


class FakeProducer:
    """Acknowledges every event at once and keeps it."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str | None, Any]] = []
        self.spool: list[Any] = []
        self.problem: str | None = None  # what delivery_problem() says

    def delivery_problem(self) -> str | None:
        return self.problem

    def submit(self, topic: str, key: str | None, event: Any) -> Future[Any]:
        self.sent.append((topic, key, event))
        done: Future[Any] = Future()
        done.set_result(None)
        return done

    def close(self) -> None:
        pass


def _class_route_endpoint() -> Any:
    """A route method of ChatServer, as ``serve.ingress`` rewrote it."""
    for route in serving_app.api.routes:
        endpoint = getattr(route, "endpoint", None)
        if getattr(endpoint, "_serve_cls", None) is not None:
            return endpoint
    raise RuntimeError("no Ray Serve class-based route in serving.app.api")


def _servable_dependency() -> Callable[[], Any]:
    """Ray Serve's dependency that hands a route its deployment instance (``self``)."""
    parameter = inspect.signature(_class_route_endpoint()).parameters["self"]
    dependency: Callable[[], Any] = parameter.default.dependency
    return dependency


def make_server(
    tmp_path: Path, status: StatusConfig | None = None, api_keys_file: Path | None = None
) -> Any:
    """A ChatServer, its attributes set as its __init__ would, on the fakes (the status
    page reads the registry and a SQLite store in ``tmp_path``)."""
    status = status or StatusConfig()
    registry = Registry(tmp_path / "registry")
    model_dir = tmp_path / "model"
    model_dir.mkdir(exist_ok=True)
    (model_dir / "config.json").write_text("{}")
    config = ServingConfig(
        engine=EngineConfig(model_path=str(model_dir), served_model_name=MODEL),
        producer=ProducerConfig(spool_dir=tmp_path / "spool"),
        default_max_tokens=8,
        feedback_secret=SecretStr(SECRET.decode()),
        user_hash_salt=SecretStr("salt"),
        admin_key=SecretStr(ADMIN_KEY),
        registry_dir=registry.root,
        store_url=f"sqlite:///{tmp_path / 'preferences.sqlite'}",
        status=status,
        api_keys_file=api_keys_file,
    )
    server = object.__new__(_class_route_endpoint()._serve_cls)  # ChatServer's own class
    server.config = config
    server.engine = FakeEngine(model_dir)
    server.secret = SECRET
    server.salt = b"salt"
    server.keys = auth.KeyRing(api_keys_file)
    server.adapters = AdapterManager(server.engine, registry, server.salt)
    server.producer = FakeProducer()
    server.feedback = FeedbackDesk(server.producer, SECRET, LIMITS.max_feedback_batch, 1.0)
    server.board = status_board(config, registry)
    return server


@contextmanager
def serving(
    tmp_path: Path, status: StatusConfig | None = None, api_keys_file: Path | None = None
) -> Iterator[Any]:
    """``serving.app.api`` answering with a fake ChatServer (yielded) while inside."""
    server = make_server(tmp_path, status, api_keys_file)
    overrides = serving_app.api.dependency_overrides
    key = _servable_dependency()
    overrides[key] = lambda: server
    try:
        yield server
    finally:
        overrides.pop(key, None)
