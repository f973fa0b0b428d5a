"""Cache keys for the response cache: who asked (the scope) and what they asked (the request).

Both are pure functions of their arguments, with no I/O, so the fallback layer can decide whether a
request may be answered from the cache before anything is sent.

The scope is a keyed hash (HMAC-SHA256) of the tenant's credentials, tenant selectors and
endpoint. The key is a secret held only in this process (:data:`PROCESS_SECRET` by default), so
a memory or cache dump holds neither the API key nor anything an attacker could brute-force it
back from. Nothing in this
module keeps a reference to the API key after the call returns.

The request key hashes a canonical form of the request body together with the operation and the
scope, so two tenants never share an entry, and neither do two requests whose answers could differ.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from typing import TYPE_CHECKING, Any, Final

import openai

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "IGNORED_FIELDS",
    "PROCESS_SECRET",
    "request_key",
    "scope_id",
]

#: The default scope secret: random, made once per process, never written anywhere. Entries are
#: therefore unreadable to another process by design (each process has its own cache anyway).
PROCESS_SECRET: Final[bytes] = secrets.token_bytes(32)

_MIN_SECRET_BYTES: Final = 16

#: Bump when the canonical form changes, so old keys can never match new requests.
_KEY_VERSION: Final = b"resilient-openai/request-key/1"

#: Request fields left out of the key, for every operation, because they cannot change the answer.
#:
#: ``stream``: how the answer travels, not what it says. Dropping it lets a streamed request be
#: answered from an entry stored by a non-streamed one (the fallback replays it as a stream), and
#: a completed stream cache an answer for later non-streamed requests.
#: ``stream_options``: framing of the stream only (a usage chunk, obfuscation padding).
#: ``service_tier``: which capacity pool serves the request (price, latency), same model, same
#: answer; the answer echoes the tier that actually served it.
#: ``prompt_cache_key`` and ``prompt_cache_retention``: hints for the upstream's own prompt cache.
#:
#: Kept on purpose, although they do not change the text: ``user``, ``safety_identifier`` and
#: ``metadata`` label *who* asked. Answers echo them (Responses echoes all three, Chat
#: Completions echoes ``metadata``), and an application that sets them draws a line between its
#: end users that a cache shared across that line would cross. ``parallel_tool_calls`` is kept
#: because it changes which tool calls the model may answer with. ``store`` is dropped for Chat
#: Completions only (see :data:`_IGNORED_BY_OPERATION`).
IGNORED_FIELDS: Final = frozenset(
    {"stream", "stream_options", "service_tier", "prompt_cache_key", "prompt_cache_retention"}
)

#: Fields ignored for one operation only. For Chat Completions ``store`` only decides whether the
#: upstream keeps a copy for its dashboard and evals. For Responses it is kept: the answer's ``id``
#: can be sent later as ``previous_response_id``, which works only if the response was stored.
_IGNORED_BY_OPERATION: Final[Mapping[str, frozenset[str]]] = {
    "chat.completions": frozenset({"store"}),
}
#: Every field left out of an operation's keys, by operation (else :data:`IGNORED_FIELDS`).
_IGNORED: Final[Mapping[str, frozenset[str]]] = {
    operation: IGNORED_FIELDS | fields for operation, fields in _IGNORED_BY_OPERATION.items()
}
#: The SDK's "not given" sentinels, which count as absent.
_SENTINELS: Final = (openai.NotGiven, openai.Omit)
#: The canonical JSON of a body: sorted keys, compact separators, UTF-8, strict (no NaN).
_CANONICAL: Final = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _frame(value: str | None) -> bytes:
    """Encode one field so that no two different field lists can produce the same bytes."""
    if value is None:
        return b"\x00"
    raw = value.encode("utf-8", "surrogatepass")
    return b"\x01" + len(raw).to_bytes(8, "big") + raw


def scope_id(
    *,
    api_key: str | None,
    organization: str | None,
    project: str | None,
    base_url: str,
    secret: bytes,
    selectors: Sequence[str | None] = (),
) -> str:
    """Identify a tenant (credentials plus endpoint) by an opaque, keyed hash.

    ``selectors`` are the other values a request carries that name or pick a tenant (credential
    headers, query parameters; see :func:`resilient_openai._sdk.sent_selectors`). Two callers
    share a scope only when all values are equal. ``None`` and ``""`` are different values.
    ``base_url`` is taken as given (the SDK already normalizes it), so a spelling difference can
    only cost a cache miss, never share an entry. ``secret`` keys the
    hash (pass :data:`PROCESS_SECRET` unless entries must match across processes) and must be at
    least 16 bytes long.
    """
    if len(secret) < _MIN_SECRET_BYTES:
        raise ValueError(f"secret must be at least {_MIN_SECRET_BYTES} bytes (got {len(secret)})")
    parts = (api_key, organization, project, base_url, *selectors)
    message = b"".join(_frame(part) for part in parts)
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def _cacheable(body: Mapping[str, Any]) -> bool:
    """Whether the answer to ``body`` is one complete, reusable answer.

    Not when it depends on server-side state every turn changes (``conversation``), or when the
    upstream answers with a queued job instead of the answer (``background``).
    """
    if body.get("conversation") is not None or body.get("background"):
        return False
    n = body.get("n")
    # Several choices are several samples: replaying one set would pass it off as fresh sampling.
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n > 1):
        return False
    # Spoken answers carry an audio id that expires upstream, so a replay would hand out a
    # reference that a follow-up turn can no longer use.
    if body.get("audio") is not None:
        return False
    modalities = body.get("modalities")
    return not (isinstance(modalities, list | tuple) and "audio" in modalities)


def request_key(operation: str, body: Mapping[str, Any], scope: str) -> str | None:
    """The cache key for ``body`` sent as ``operation`` by the tenant ``scope``, or None.

    The key is a SHA-256 over the operation, the scope and the body as canonical JSON (sorted
    keys, compact separators, UTF-8) without the fields in :data:`IGNORED_FIELDS`. Everything
    else, ``model``, ``temperature``, ``seed``, ``tools``, ``response_format`` and so on, is part
    of the key because it can change the answer. Top-level SDK sentinels (``NOT_GIVEN``,
    ``omit``) count as absent.

    None means "never cache this request": ``n`` above 1, audio output, server-side
    conversation state or background mode, or a body that is not plain JSON (bytes, files,
    paths, NaN, objects), as multipart uploads are.
    """
    ignored = _IGNORED.get(operation, IGNORED_FIELDS)
    # No ignored field is one that makes a body uncacheable, so both are judged on ``kept``.
    kept = {
        name: value
        for name, value in body.items()
        if name not in ignored and not isinstance(value, _SENTINELS)
    }
    if not _cacheable(kept):
        return None
    if kept.get("n") == 1:
        del kept["n"]  # n=1 is the default
    try:
        canonical = _CANONICAL.encode(kept)
    except (TypeError, ValueError):
        return None
    message = b"".join((_KEY_VERSION, _frame(operation), _frame(scope), _frame(canonical)))
    return hashlib.sha256(message).hexdigest()
