"""Schemathesis against the real stack's ``/openapi.json``: every route, with requests
generated from its documented schema (valid and invalid ones, a few per route; chat on the
served model with a handful of tokens), answers without a 5xx and as documented: status,
content type, body and headers. tests/unit/test_openapi_contract.py does the same on the
ASGI app with a fake engine.

The document is loaded from ``serving.app`` when the tests are collected (Schemathesis needs
it then, before the stack runs; its lazy loader breaks on pytest 9), and the first test
checks that the stack serves the same routes, methods and statuses.

Nothing it sends can change the stack the other tests share: the admin routes that act get
no admin key (401), the feedback no valid token (403). Skipped where Schemathesis is not
installed (it is in the ``dev`` extra).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from livealign.stack import LocalStack
from serving.app import api
from tests.contract import CHECK_NAMES

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402  (after the skip)

MODEL = "livealign"
CHECKS = [getattr(schemathesis.checks, name) for name in CHECK_NAMES]
CHAT_TOKENS = 4


DOCUMENT = api.openapi()
schema = schemathesis.openapi.from_dict(DOCUMENT)


def _surface(doc: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    """Each route and method with the statuses it documents."""
    return {
        (path, method): set(op.get("responses", {}))
        for path, item in doc["paths"].items()
        for method, op in item.items()
    }


def test_the_stack_serves_the_document_tested(http: httpx.Client) -> None:
    """The same routes, methods and statuses as the document Schemathesis is driven by.
    (Not byte-equal: the replica's copy of the app renders some parameter details and
    examples differently from the one built in this process.)"""
    served = http.get("/openapi.json").json()
    assert _surface(served) == _surface(json.loads(json.dumps(DOCUMENT)))
    assert served["components"].keys() == DOCUMENT["components"].keys()


def bounded(case: Any) -> None:
    """A generated chat request, made cheap: the served model (else it is a 404 before the
    engine), at most a few tokens."""
    if case.path != "/v1/chat/completions" or not isinstance(case.body, dict):
        return
    case.body["model"] = MODEL
    case.body.setdefault("max_tokens", CHAT_TOKENS)
    for key in ("max_tokens", "max_completion_tokens"):
        value = case.body.get(key)
        if type(value) is int and value > CHAT_TOKENS:
            case.body[key] = CHAT_TOKENS


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_route_answers_as_documented(case: Any, stack: LocalStack, admin_key: str) -> None:
    bounded(case)
    # The admin key for the read-only routes only: a generated promote, rollback or canary
    # command must not change the stack the other tests share (without the key: a 401).
    readonly = case.method.upper() == "GET" and case.path.startswith("/admin")
    headers = {"Authorization": f"Bearer {admin_key}"} if readonly else None
    case.call_and_validate(base_url=stack.url, headers=headers, checks=CHECKS, timeout=120)
