"""Wire shapes only the fake upstream sends: embeddings, the model list, error bodies, filler text.

The shapes the library's fallbacks also synthesize (chat completions, chunks, responses, SSE)
live in :mod:`resilient_openai._shapes`; these build on the same conventions (deterministic,
plain dicts, no I/O).
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
from typing import TYPE_CHECKING

from .._shapes import DEFAULT_CREATED, JSONDict, count_tokens

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

__all__ = ["embeddings", "error_body", "model_list", "placeholder_text"]


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
