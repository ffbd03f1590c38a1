"""The API's documented surface: the OpenAPI document made whole, every route's error
responses, and the typed headers, path parameters and credentials the routes take.

The document is for clients and contract-testing tools (tests/integration/
test_api_contract.py runs Schemathesis against it): every ``$ref`` resolves inside it, and
every status a route answers is listed with its body.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import FastAPI, Header, Path, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serving.canary.commands import CanaryWeight
from serving.feedback import FeedbackBatch, FeedbackResult
from serving.limits import LIMITS
from serving.protocol import ConversationId, ErrorResponse
from streaming.events import FeedbackIn

REF = "#/components/schemas/{model}"
# Bodies a route parses itself (feedback judges each event of a batch on its own), so
# FastAPI does not see their models: their schemas are added to the document's components.
PARSED_BODIES: tuple[type[BaseModel], ...] = (FeedbackIn, FeedbackBatch, CanaryWeight)


class LiveAlignAPI(FastAPI):
    def openapi(self) -> dict[str, Any]:
        """FastAPI's document, made whole: the schemas of the self-parsed bodies under
        components (pydantic's own ``model_json_schema()`` would put the models they use
        in a ``$defs`` no OpenAPI tool resolves), and without FastAPI's 422 for invalid
        parameters, which this API answers with OpenAI's 400 (``_validation_error``)."""
        if self.openapi_schema is not None:
            return self.openapi_schema
        doc = super().openapi()
        _, top = models_json_schema([(m, "validation") for m in PARSED_BODIES], ref_template=REF)
        schemas = doc.setdefault("components", {}).setdefault("schemas", {})
        schemas.update(top.get("$defs", {}))
        fastapi_422 = {"$ref": REF.format(model="HTTPValidationError")}
        for operation in (op for path in doc["paths"].values() for op in path.values()):
            answer = operation["responses"].get("422", {})
            if answer.get("content", {}).get("application/json", {}).get("schema") == fastapi_422:
                del operation["responses"]["422"]
        schemas.pop("HTTPValidationError", None)
        schemas.pop("ValidationError", None)
        return doc


ERROR_TEXT = {
    400: "Malformed: not JSON, or a field out of its bounds (the message names it).",
    401: "No or an unknown key: send `Authorization: Bearer <key>` (the admin key on "
    "/admin, an API key on chat, models and feedback when the server requires them).",
    403: "Not allowed: a wrong admin key, a bad feedback token, or the admin API is off.",
    404: "No such model or adapter version.",
    409: "No canary (or no rollout) to act on, or an adapter refused.",
    413: f"The body is over {LIMITS.max_body_bytes} bytes, or a batch over "
    f"{LIMITS.max_feedback_batch} events.",
    415: "A body that is not JSON by its Content-Type (a form): send application/json or "
    "text/plain.",
    422: "A well-formed body with a wrong value (the message names it).",
    429: "Over the API key's rate limit: retry after the `Retry-After` seconds.",
    503: "Not stored yet (broker down, spool full): retry with the same event_id.",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of these error statuses, each an ``ErrorResponse``."""
    return {code: {"model": ErrorResponse, "description": ERROR_TEXT[code]} for code in codes}


def json_body(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        body["description"] = description
    return {"requestBody": body}


def ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


# What the chat answer carries besides its body.
CHAT_HEADERS = {
    name: {"description": text, "schema": {"type": "string"}}
    for name, text in {
        "X-LiveAlign-Response-Id": "The response's id (feedback names it).",
        "X-LiveAlign-Conversation-Id": "The conversation's id (given, or made).",
        "X-LiveAlign-Feedback-Token": "The token feedback on this response must carry.",
        "X-LiveAlign-Adapter": 'The adapter version that answered ("base": none).',
        "X-LiveAlign-Arm": "The canary arm that answered.",
    }.items()
}
# With `stream`, the answer is server-sent events; before OpenAPI 3.2 (itemSchema) the
# media type's schema is read as one event's.
SSE_EVENT = {
    "type": "object",
    "description": "One server-sent event: its data a chat.completion.chunk as JSON, and "
    "`[DONE]` in the last one.",
    "properties": {
        "data": {"type": "string"},
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
    "required": ["data"],
}
CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A completion; with `stream`, server-sent chat.completion.chunk events.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
        "headers": CHAT_HEADERS,
    },
    **errors(400, 401, 403, 404, 409, 413, 429),
}
FEEDBACK_BODY = json_body(
    {"anyOf": [ref(FeedbackIn), ref(FeedbackBatch)]},
    'One event, or {"events": [event, ...]} for a batch. The same JSON may come as '
    "text/plain: what a browser posts across origins without a preflight "
    "(navigator.sendBeacon, the widget).",
)
FEEDBACK_BODY["requestBody"]["content"]["text/plain"] = FEEDBACK_BODY["requestBody"]["content"][
    "application/json"
]
SET_WEIGHT_BODY = json_body(ref(CanaryWeight))
# A single event's refusal is an ErrorResponse; a batch answers a FeedbackResult, with the
# status of its worst item when none was accepted.
FEEDBACK_REFUSED = {"anyOf": [ref(ErrorResponse), ref(FeedbackResult)]}
FEEDBACK_RESPONSES: dict[int | str, dict[str, Any]] = {
    **errors(400, 401, 415, 429),
    **{
        code: {
            "description": ERROR_TEXT[code],
            "content": {"application/json": {"schema": FEEDBACK_REFUSED}},
        }
        for code in (403, 413, 422, 503)
    },
}

# Stated as JSON: the page's route answers HTML, its errors are this API's JSON ones.
STATUS_OFF = {
    "description": "The status page is off (status.enabled).",
    "content": {"application/json": {"schema": ref(ErrorResponse)}},
}
STATUS_PAGE_RESPONSES: dict[int | str, dict[str, Any]] = {404: STATUS_OFF}
STATUS_RESPONSES: dict[int | str, dict[str, Any]] = {
    404: STATUS_OFF,
    503: {
        "model": ErrorResponse,
        "description": "Not read in time (a slow preference store): try again later.",
    },
}

ADMIN_BEARER = HTTPBearer(
    auto_error=False,  # its own 401/403 would not be in this API's error shape
    scheme_name="AdminKey",
    description="The admin key: LIVEALIGN_ADMIN_KEY, or the one kept in the home's secrets.json.",
)
AdminCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(ADMIN_BEARER)]
API_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key (`livealign keys add`), when the server requires them "
    "(api_keys); without, these routes are open.",
)
ApiCredentials = Annotated[HTTPAuthorizationCredentials | None, Security(API_BEARER)]
ConversationHeader = Annotated[
    ConversationId | None,
    Header(alias="X-Conversation-Id", description="The conversation, if the body names none."),
]
ArmHeader = Annotated[
    Literal["stable", "canary"] | None,
    Header(alias="X-LiveAlign-Arm", description="Pin an arm (debugging; needs the admin key)."),
]
AdminKeyHeader = Annotated[
    str | None, Header(alias="X-LiveAlign-Admin-Key", description="The admin key, to pin an arm.")
]
AdapterRef = Annotated[
    str,
    Path(
        min_length=1,
        max_length=LIMITS.max_ref_chars,
        pattern=LIMITS.ref_pattern,
        description='An adapter version: "name@N", "N", or "base".',
    ),
]
