"""A streamed answer's events are decoded once, by the chain's guard, and never again by the SDK."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from .conftest import Harness, text_of


@pytest.fixture
def chunk_parses(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Every ``json.loads`` argument that held a chat completion chunk, as decoding goes on."""
    seen: list[object] = []
    real = json.loads

    def spy(raw: Any, *args: Any, **kwargs: Any) -> Any:
        text = raw.decode() if isinstance(raw, bytes | bytearray) else raw
        if isinstance(text, str) and "chat.completion.chunk" in text:
            seen.append(raw)
        return real(raw, *args, **kwargs)

    monkeypatch.setattr(json, "loads", spy)
    return seen


def test_each_stream_event_is_parsed_once(harness: Harness, chunk_parses: list[object]) -> None:
    """Every chunk of a healthy stream reaches the caller, and its JSON was decoded exactly once."""
    _, chunks, error = harness.stream_chat(harness.client())
    assert error is None
    assert text_of(chunks)
    assert len(chunk_parses) == len(chunks)


def test_the_plain_sdk_parses_each_event_itself(harness: Harness, chunk_parses: list[object]) -> None:
    """The spy sees the SDK's own decoding: without the chain, the SDK parses every chunk."""
    client = harness.raw()
    request: dict[str, Any] = {
        "model": "gpt-A",
        "messages": [{"role": "user", "content": "hi"}],
        "stream": True,
    }
    if harness.is_async:

        async def read() -> list[Any]:
            return [chunk async for chunk in await client.chat.completions.create(**request)]

        chunks = asyncio.run(read())
    else:
        chunks = list(client.chat.completions.create(**request))
    assert chunks
    assert len(chunk_parses) == len(chunks)
