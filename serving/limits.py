"""Every bound the HTTP API puts on what a client sends, in one place.

A limit keeps what the engine, the broker and the preference store see within what they
take (vLLM's seed is an int64; a header value must stay Latin-1; the store's id columns
hold 200 characters) and a request's cost within reason (the engine checks each ``stop``
string on every token; a body is held in memory while it is parsed).

These are constants of the API, not deployment settings: the request models are built
from them when ``serving.protocol`` is imported, and the OpenAPI document states them
(``maxLength``, ``maxItems``, ``pattern``, ...), so a client can check a request before
sending it. Breaking one is a 400 naming the field (413 for the body and a feedback batch).

The feedback event's own bounds belong to the event contract, which non-Python clients
validate against through its JSON Schemas (``streaming.events.FeedbackIn``: ``response_id``
and ``event_id`` at most 200 characters, ``feedback_token`` at most 500;
``streaming.kinds``: an edit or comment at most 32,000 characters, a dwell at most a day).
"""

from __future__ import annotations

from dataclasses import dataclass

# The largest integer every JSON client reads exactly (JavaScript's MAX_SAFE_INTEGER), and
# that the OpenAPI document can state exactly (FastAPI writes a bound as a float there).
SAFE_INT = 2**53 - 1


@dataclass(frozen=True)
class RequestLimits:
    # Whole request bodies, counted as they arrive (serving.middleware.BodySizeLimit).
    max_body_bytes: int = 1024 * 1024
    # Chat: the conversation. Its tokens are bounded again by the model's context length.
    max_messages: int = 256
    max_message_chars: int = 65_536  # one message's text (a list of parts: all parts)
    max_content_parts: int = 64
    max_name_chars: int = 256  # a message's `name`, and the request's `model`
    # Chat: sampling. vLLM takes any max_tokens; the context length is the real bound, this
    # one only keeps the number sane before the prompt is rendered.
    max_tokens: int = 131_072
    max_stop: int = 4  # OpenAI's own limit: every stop string is checked on every token
    max_stop_chars: int = 256
    # vLLM takes an int64 (torch's generator seed; 2**64 failed in its engine): a seed no
    # client can write exactly is no use, so the bound is the safe integers, well inside.
    seed_min: int = -SAFE_INT
    seed_max: int = SAFE_INT
    # Chat: identity. The user is only ever hashed (any text); the conversation id becomes
    # a response header, a Kafka key and a store column, so it is short and plain ASCII.
    max_user_chars: int = 256
    max_conversation_id_chars: int = 128
    conversation_id_pattern: str = r"^[A-Za-z0-9._:@+=/-]+$"
    # Feedback: events in one batch.
    max_feedback_batch: int = 100
    # Admin: an adapter version in a path ("name@N", "N" or "base"): ASCII, so its number
    # is made of the digits int() reads.
    max_ref_chars: int = 128
    ref_pattern: str = r"^[A-Za-z0-9._@-]+$"


LIMITS = RequestLimits()
