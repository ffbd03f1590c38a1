"""What the Schemathesis contract tests check, in the unit suite (the ASGI app on fakes)
and in the integration suite (the running stack) alike: no server error, and every answer
as its route documents it."""

from __future__ import annotations

CHECK_NAMES = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)
