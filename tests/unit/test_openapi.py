"""The OpenAPI document of serving.app is complete and self-contained: every ``$ref``
resolves inside it (no pydantic ``$defs`` left over), every status a route answers is
documented with its body, the admin routes name their credentials. Built from the module's
``api`` as Ray Serve's ingress left it, without starting Ray."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from serving.limits import LIMITS


@pytest.fixture(scope="module")
def doc() -> dict[str, Any]:
    from serving.app import api

    document: dict[str, Any] = api.openapi()
    return document


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from refs(item)


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), f"{ref} points outside the document"
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"{ref} does not resolve"
        node = node[part]
    return node


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, operation in item.items():
            yield method.upper(), path, operation


def test_every_ref_resolves_inside_the_document(doc: dict[str, Any]) -> None:
    found = set(refs(doc))
    assert "#/components/schemas/FeedbackKind" in found
    for ref in found:
        resolve(doc, ref)
    assert "$defs" not in str(doc)


def test_every_route_is_documented_with_its_error_statuses(doc: dict[str, Any]) -> None:
    documented = {(m, p): set(op["responses"]) for m, p, op in operations(doc)}
    admin = {k: v for k, v in documented.items() if k[1].startswith("/admin")}
    assert len(admin) == 8
    for route, statuses in admin.items():
        assert {"401", "403"} <= statuses, route
    for route in [("POST", "/v1/chat/completions"), ("POST", "/v1/feedback"),
                  ("POST", "/admin/canary/set-weight")]:  # fmt: skip
        assert "413" in documented[route], route
    assert {"200", "400", "403", "404", "409", "413"} <= documented[
        ("POST", "/v1/chat/completions")
    ]
    assert {"202", "400", "403", "413", "422", "503"} <= documented[("POST", "/v1/feedback")]
    assert "400" in documented[("POST", "/admin/adapters/{ref}/{action}")]
    assert documented[("GET", "/status")] == {"200", "404"}
    assert documented[("GET", "/v1/status")] == {"200", "404", "503"}
    page = doc["paths"]["/status"]["get"]["responses"]["200"]
    assert set(page["content"]) == {"text/html"}  # the page; its errors are JSON (below)
    status = doc["paths"]["/v1/status"]["get"]["responses"]["200"]
    assert status["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/StatusReport"
    }
    # Invalid parameters are OpenAI's 400 here, not FastAPI's 422 with its own body.
    assert "HTTPValidationError" not in doc["components"]["schemas"]


def test_every_error_answer_has_the_error_body(doc: dict[str, Any]) -> None:
    error = "#/components/schemas/ErrorResponse"
    for method, path, operation in operations(doc):
        for status, answer in operation["responses"].items():
            if status.startswith(("4", "5")):
                schema = answer["content"]["application/json"]["schema"]
                assert error in set(refs(schema)), (method, path, status)


def test_the_admin_routes_name_their_bearer_credentials(doc: dict[str, Any]) -> None:
    scheme = doc["components"]["securitySchemes"]["AdminKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for _, path, operation in operations(doc):
        assert (operation.get("security") == [{"AdminKey": []}]) == path.startswith("/admin")


def test_the_bounds_are_in_the_document(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    request = schemas["ChatCompletionRequest"]["properties"]
    assert request["messages"]["maxItems"] == LIMITS.max_messages
    seed = request["seed"]["anyOf"][0]
    assert (seed["minimum"], seed["maximum"]) == (LIMITS.seed_min, LIMITS.seed_max)
    assert request["max_tokens"]["anyOf"][0]["maximum"] == LIMITS.max_tokens
    assert LIMITS.max_stop in [s.get("maxItems") for s in request["stop"]["anyOf"][0]["oneOf"]]
    assert request["conversation_id"]["anyOf"][0]["pattern"] == LIMITS.conversation_id_pattern
    assert schemas["FeedbackBatch"]["properties"]["events"]["maxItems"] == LIMITS.max_feedback_batch
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    header = {p["name"]: p for p in chat["parameters"]}["X-Conversation-Id"]
    assert header["schema"]["anyOf"][0]["maxLength"] == LIMITS.max_conversation_id_chars
    assert set(chat["responses"]["200"]["content"]) == {"application/json", "text/event-stream"}
