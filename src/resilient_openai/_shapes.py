"""Pure builders of OpenAI wire shapes: plain dicts and bytes, no I/O, no clock, no SDK import.

The library's fallbacks use them to synthesize answers the SDK parses exactly as a real one
(canned replies, cache replay, stream synthesis); the fake upstream in
:mod:`resilient_openai.testing` answers with them, and with the shapes only it sends (embeddings,
the model list, error bodies, filler text). Every builder is deterministic: the same arguments
give the same dict, so ids and timestamps default to values derived from the content or to
:data:`DEFAULT_CREATED`.

Tokens here are whitespace-delimited words that keep their leading whitespace (``"a b"`` is
``["a", " b"]``), so joining the deltas of a stream gives back the exact text.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = [
    "DEFAULT_CREATED",
    "JSONDict",
    "chat_chunks",
    "chat_completion",
    "count_tokens",
    "embeddings",
    "error_body",
    "model_list",
    "placeholder_text",
    "response_events",
    "response_object",
    "split_tokens",
    "sse",
]

JSONDict = dict[str, Any]
"""A JSON object as the SDK's types see it before validation."""

DEFAULT_CREATED = 1_767_225_600
"""The timestamp (2026-01-01T00:00:00Z) used when a builder is not given one."""

_TOKEN = re.compile(r"\s*\S+|\s+")


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into stream tokens whose concatenation is exactly ``text``.

    Each token is one word with the whitespace before it; trailing whitespace is a token of its own.
    """
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens :func:`split_tokens` finds in ``text``: the fake's usage accounting."""
    return len(split_tokens(text))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _chat_usage(prompt_tokens: int, completion_tokens: int) -> JSONDict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def chat_completion(
    text: str,
    model: str,
    *,
    id: str | None = None,
    created: int | None = None,
    prompt_tokens: int = 0,
    tool_call: tuple[str, str] | None = None,
) -> JSONDict:
    """A ``chat.completion`` object whose single assistant message is ``text``.

    ``id`` defaults to one derived from the model and text, ``created`` to :data:`DEFAULT_CREATED`;
    usage counts ``prompt_tokens`` and :func:`count_tokens` of the text. ``tool_call``
    (function name, arguments as JSON text) makes the message that one tool call instead, with
    ``finish_reason="tool_calls"``.
    """
    completion: JSONDict = {
        "id": id if id is not None else f"chatcmpl-{_digest(model, text)[:29]}",
        "object": "chat.completion",
        "created": created if created is not None else DEFAULT_CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": _chat_usage(prompt_tokens, count_tokens(text)),
        "service_tier": "default",
    }
    if tool_call is not None:
        name, arguments = tool_call
        choice: JSONDict = completion["choices"][0]
        choice["finish_reason"] = "tool_calls"
        choice["message"]["content"] = None
        choice["message"]["tool_calls"] = [
            {
                "id": f"call_{_digest(name, arguments)[:24]}",
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
        ]
    return completion


def chat_chunks(completion: JSONDict, *, include_usage: bool) -> list[JSONDict]:
    """The ``chat.completion.chunk`` objects a server streams for ``completion``.

    Per choice: a first chunk with ``{"role": "assistant", "content": ""}``, one chunk per token of
    the message content, one chunk per tool call (whole), then a chunk with an empty delta and
    the ``finish_reason``. With
    ``include_usage`` (``stream_options.include_usage``) every chunk carries ``"usage": null`` and
    a last chunk with no choices carries the usage. All chunks share id, created and model.
    """
    head = {
        "id": completion["id"],
        "object": "chat.completion.chunk",
        "created": completion["created"],
        "model": completion["model"],
        "service_tier": completion.get("service_tier", "default"),
    }

    def chunk(index: int, delta: JSONDict, finish_reason: str | None) -> JSONDict:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        extra: JSONDict = {"usage": None} if include_usage else {}
        return {**head, "choices": [choice], **extra}

    chunks: list[JSONDict] = []
    for choice in completion["choices"]:
        index = choice["index"]
        content = choice["message"].get("content") or ""
        chunks.append(chunk(index, {"role": "assistant", "content": ""}, None))
        chunks.extend(chunk(index, {"content": token}, None) for token in split_tokens(content))
        chunks.extend(
            chunk(index, {"tool_calls": [{"index": position, **call}]}, None)
            for position, call in enumerate(choice["message"].get("tool_calls") or ())
        )
        chunks.append(chunk(index, {}, choice["finish_reason"]))
    if include_usage:
        usage = completion.get("usage")
        if usage is None:
            completion_tokens = sum(
                count_tokens(choice["message"].get("content") or "") for choice in completion["choices"]
            )
            usage = _chat_usage(0, completion_tokens)
        chunks.append({**head, "choices": [], "usage": usage})
    return chunks


def sse(
    events: Iterable[JSONDict | str], *, done: bool = True, event_names: Iterable[str | None] | None = None
) -> bytes:
    """Frame ``events`` as a ``text/event-stream`` body.

    A dict becomes ``data: <compact JSON>``; a string is sent as the data verbatim (one ``data:``
    line per line of it), which is how a test sends a malformed event. ``event_names``, parallel
    to ``events``, adds ``event: <name>`` lines (``None`` for none). ``done`` appends the chat
    stream terminator ``data: [DONE]``.
    """
    items = list(events)
    names: list[str | None] = [None] * len(items) if event_names is None else list(event_names)
    if len(names) != len(items):
        raise ValueError(f"event_names has {len(names)} names for {len(items)} events")
    out: list[str] = []
    for item, name in zip(items, names, strict=True):
        if name is not None:
            out.append(f"event: {name}\n")
        data = item if isinstance(item, str) else json.dumps(item, separators=(",", ":"), ensure_ascii=False)
        out.extend(f"data: {line}\n" for line in data.split("\n"))
        out.append("\n")
    if done:
        out.append("data: [DONE]\n\n")
    return "".join(out).encode()


def _output_text(text: str) -> JSONDict:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def _response_usage(input_tokens: int, output_tokens: int) -> JSONDict:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def response_object(
    text: str,
    model: str,
    *,
    id: str | None = None,
    item_id: str | None = None,
    created_at: int | None = None,
    input_tokens: int = 0,
    tool_call: tuple[str, str] | None = None,
) -> JSONDict:
    """A completed Responses API ``response`` with one assistant message holding ``text``.

    ``id`` (``resp_...``) and ``item_id`` (``msg_...``) default to values derived from the model
    and text, ``created_at`` to :data:`DEFAULT_CREATED`; usage counts ``input_tokens`` and
    :func:`count_tokens` of the text. ``tool_call`` (function name, arguments as JSON text)
    makes the output that one ``function_call`` item instead (``item_id``: ``fc_...``).
    """
    digest = _digest(model, text) if tool_call is None else _digest(model, *tool_call)
    created = created_at if created_at is not None else DEFAULT_CREATED
    item: JSONDict = {
        "id": item_id if item_id is not None else f"msg_{digest[16:64]}",
        "type": "message",
        "status": "completed",
        "role": "assistant",
        "content": [_output_text(text)],
    }
    if tool_call is not None:
        name, arguments = tool_call
        item = {
            "id": item_id if item_id is not None else f"fc_{digest[16:64]}",
            "type": "function_call",
            "status": "completed",
            "call_id": f"call_{digest[:24]}",
            "name": name,
            "arguments": arguments,
        }
    return {
        "id": id if id is not None else f"resp_{digest[:48]}",
        "object": "response",
        "created_at": created,
        "status": "completed",
        "background": False,
        "completed_at": created,
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "max_output_tokens": None,
        "max_tool_calls": None,
        "model": model,
        "output": [item],
        "parallel_tool_calls": True,
        "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "temperature": 1.0,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": "auto",
        "tools": [],
        "top_logprobs": 0,
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": _response_usage(input_tokens, count_tokens(text)),
        "user": None,
        "metadata": {},
    }


def response_events(response: JSONDict) -> list[tuple[str, JSONDict]]:
    """The typed stream events, as ``(event name, data)``, a server sends for ``response``.

    ``response.created`` and ``response.in_progress`` (the response in progress, no output yet),
    then per message and per ``output_text`` part: ``response.output_item.added``,
    ``response.content_part.added``, one ``response.output_text.delta`` per token,
    ``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``;
    per function call: ``response.output_item.added``, one
    ``response.function_call_arguments.delta`` (the whole arguments),
    ``response.function_call_arguments.done``, ``response.output_item.done``; finally
    ``response.completed`` with ``response`` itself. ``sequence_number`` counts from 0.
    Only message outputs with ``output_text`` parts and function calls are supported.
    """
    events: list[tuple[str, JSONDict]] = []

    def emit(kind: str, **fields: Any) -> None:
        events.append((kind, {"type": kind, "sequence_number": len(events), **fields}))

    pending = {**response, "status": "in_progress", "output": [], "usage": None, "completed_at": None}
    emit("response.created", response=pending)
    emit("response.in_progress", response=pending)
    for output_index, item in enumerate(response["output"]):
        item_id = item["id"]
        if item.get("type") == "function_call":
            emit(
                "response.output_item.added",
                output_index=output_index,
                item={**item, "status": "in_progress", "arguments": ""},
            )
            where = {"item_id": item_id, "output_index": output_index}
            emit("response.function_call_arguments.delta", **where, delta=item["arguments"])
            emit(
                "response.function_call_arguments.done",
                **where,
                name=item["name"],
                arguments=item["arguments"],
            )
            emit("response.output_item.done", output_index=output_index, item=item)
            continue
        if item.get("type") != "message":
            raise ValueError(
                f"response_events supports message and function_call outputs only, got {item.get('type')!r}"
            )
        emit(
            "response.output_item.added",
            output_index=output_index,
            item={**item, "status": "in_progress", "content": []},
        )
        for content_index, part in enumerate(item["content"]):
            if part.get("type") != "output_text":
                raise ValueError(f"response_events supports output_text parts only, got {part.get('type')!r}")
            where = {"item_id": item_id, "output_index": output_index, "content_index": content_index}
            emit("response.content_part.added", **where, part=_output_text(""))
            for token in split_tokens(part["text"]):
                emit("response.output_text.delta", **where, delta=token, logprobs=[])
            emit("response.output_text.done", **where, text=part["text"], logprobs=[])
            emit("response.content_part.done", **where, part=part)
        emit("response.output_item.done", output_index=output_index, item=item)
    emit("response.completed", response=response)
    return events


def placeholder_text(tokens: int) -> str:
    """A deterministic answer of ``tokens`` tokens: ``"tok0 tok1 ... tok{tokens-1}"``."""
    return " ".join(f"tok{i}" for i in range(tokens))


def embeddings(inputs: Sequence[str], model: str, *, encoding_format: str, dims: int = 8) -> JSONDict:
    """A ``list`` of embeddings: per input, a deterministic unit vector of ``dims`` float32 values.

    Equal texts give equal vectors. ``encoding_format`` is ``"float"`` (lists of numbers) or
    ``"base64"`` (base64 of little-endian float32, what the SDK asks for by default and decodes
    itself); the values survive the float32 round trip, so both decode to the same numbers.
    """
    if encoding_format not in ("float", "base64"):
        raise ValueError(f"encoding_format must be 'float' or 'base64', got {encoding_format!r}")
    data: list[JSONDict] = []
    for index, text in enumerate(inputs):
        blocks = range(math.ceil(dims / 8))
        raw = b"".join(hashlib.sha256(f"{block}\0{text}".encode()).digest() for block in blocks)
        values = [w / 0xFFFFFFFF * 2.0 - 1.0 for w in struct.unpack(f"<{dims}I", raw[: 4 * dims])]
        norm = math.sqrt(sum(v * v for v in values)) or 1.0
        packed = struct.pack(f"<{dims}f", *(v / norm for v in values))
        vector: list[float] | str = list(struct.unpack(f"<{dims}f", packed))
        if encoding_format == "base64":
            vector = base64.b64encode(packed).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": vector})
    tokens = sum(count_tokens(text) for text in inputs)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def model_list(ids: Iterable[str], *, created: int = DEFAULT_CREATED) -> JSONDict:
    """The ``GET /v1/models`` answer listing ``ids`` in the order given."""
    return {
        "object": "list",
        "data": [{"id": name, "object": "model", "created": created, "owned_by": "system"} for name in ids],
    }


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> JSONDict:
    """The ``{"error": {...}}`` body OpenAI sends with a 4xx/5xx status."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}
