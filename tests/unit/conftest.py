"""Unit tests: no broker, no Ray, no vLLM engine (AsyncLLM), and the whole folder in well
under a minute on two cores (``make test-unit``). A test that needs any of them belongs in
tests/integration.

The guard below makes a unit test that starts one fail, naming what it started. It patches
only modules already imported (importing Ray or vLLM just to forbid them would cost seconds),
which covers a test that imports what it starts at the top of its file, as they all do."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest

# module: (class or None for the module itself, the attribute that starts it)
STARTERS = {
    "streaming.broker": ("EmbeddedBroker", "start"),
    "livealign.stack": ("LocalStack", "__enter__"),
    "ray": (None, "init"),
    "vllm.v1.engine.async_llm": ("AsyncLLM", "from_engine_args"),
}


@pytest.fixture(autouse=True)
def _nothing_started(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for module_name, (cls, attr) in STARTERS.items():
        module = sys.modules.get(module_name)
        if module is None:
            continue
        what = ".".join(filter(None, (module_name, cls, attr)))

        def refuse(*args: Any, _what: str = what, **kwargs: Any) -> None:
            raise RuntimeError(f"a unit test started {_what}: move it to tests/integration")

        monkeypatch.setattr(getattr(module, cls) if cls else module, attr, refuse)
    yield
