"""Answers made locally (cached, canned, from a function), delivered as the SDK's own types.

The body is wrapped in a synthetic HTTP response and handed to the client's own response
processing, so a fallback comes back exactly as an upstream answer would: a ``ChatCompletion``,
a ``Stream`` of chunks, a raw response wrapper — whatever the caller's method returns.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Any

import httpx2

from .. import _shapes

__all__ = ["CANNED_MODEL", "FUNCTION_MODEL", "answer_body", "synthetic_response", "text_answer"]

#: The ``model`` a canned answer carries, so the response itself says it is not a model's.
CANNED_MODEL = "resilient-openai/canned"
#: The ``model`` an answer from a user function carries.
FUNCTION_MODEL = "resilient-openai/function"


def text_answer(
    operation: str, text: str, model: str, tool_call: tuple[str, str] | None = None
) -> dict[str, Any] | None:
    """A complete answer object holding ``text``, or the ``tool_call`` (name, arguments as JSON
    text); None for operations that have no text answer."""
    ident = uuid.uuid4().hex[:24]
    if operation == "chat.completions":
        return _shapes.chat_completion(
            text, model, id=f"chatcmpl-rs{ident}", created=int(time.time()), tool_call=tool_call
        )
    if operation == "responses":
        return _shapes.response_object(text, model, id=f"resp_rs{ident}", tool_call=tool_call)
    return None


def answer_body(
    operation: str, answer: Mapping[str, Any], *, stream: bool, body: Mapping[str, Any] | None
) -> bytes:
    """Wire bytes for ``answer``: its JSON, or the server-sent events that would stream it."""
    if not stream:
        return json.dumps(answer, separators=(",", ":")).encode()
    if operation == "responses":
        events = _shapes.response_events(dict(answer))
        return _shapes.sse([data for _, data in events], done=False, event_names=[name for name, _ in events])
    options = (body or {}).get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    return _shapes.sse(_shapes.chat_chunks(dict(answer), include_usage=include_usage))


def synthetic_response(request: httpx2.Request, content: bytes, *, stream: bool) -> httpx2.Response:
    """An HTTP 200 carrying ``content``, as if ``request`` had been answered with it."""
    kind = "text/event-stream" if stream else "application/json"
    headers = {"content-type": kind, "x-request-id": f"resilient-{uuid.uuid4().hex[:16]}"}
    return httpx2.Response(200, headers=headers, content=content, request=request)
