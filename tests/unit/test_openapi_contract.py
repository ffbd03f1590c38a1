"""Schemathesis against the ASGI app of serving.app on the fakes (tests/unit/serving_app.py):
every route, with examples made from its OpenAPI document (valid ones and invalid ones), is
answered without a server error and as documented (status, content type, body, headers).
tests/integration/test_api_contract.py does the same against the real stack.

Skipped where Schemathesis is not installed (it is in the ``dev`` extra)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the skip)

from serving.app import api  # noqa: E402
from tests.contract import CHECK_NAMES  # noqa: E402
from tests.unit.serving_app import ADMIN_KEY, MODEL, serving  # noqa: E402

CHECKS = [getattr(schemathesis.checks, name) for name in CHECK_NAMES]
schema = schemathesis.openapi.from_asgi("/openapi.json", api)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with serving(tmp_path_factory.mktemp("contract")) as server:
        yield server


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_as_documented(case: Any, served: Any) -> None:
    if case.path == "/v1/chat/completions" and isinstance(case.body, dict):
        case.body["model"] = MODEL  # past the 404: the sampling values reach vLLM's checks
    # The admin key too: on the fakes the admin routes act on a registry in a temporary
    # folder, so the generated calls reach past the credential check.
    case.call_and_validate(checks=CHECKS, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
