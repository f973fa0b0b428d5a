"""Who is calling: the tenant scope of one request, for the answer cache and the quota ledger.

A tenant is everything a request carries that names or picks an account: the client's API key,
organization, project and base URL, the credential and tenant headers (``Authorization``,
``api-key``, ``OpenAI-Organization``, ``OpenAI-Project``) from its default headers or the
request's own, and the query parameters. The scope is an HMAC of those values
(:func:`~resilient_openai._fallback.keys.scope_id`), so it never holds a secret.

Most requests carry no selectors of their own: their scope is the client's, computed once and
remembered on the client while its credentials and defaults stay the same. A request with its
own tenant headers or query is scoped on each call.
"""

from __future__ import annotations

from typing import Any

from .. import _sdk
from .._fallback.keys import PROCESS_SECRET, scope_id

__all__ = ["scope"]


def _computed(client: Any, options: _sdk.Options, secret: bytes) -> str:
    return scope_id(
        api_key=client.api_key, organization=client.organization, project=client.project,
        base_url=str(_sdk.base_url(client)), secret=secret,
        selectors=_sdk.sent_selectors(client, options),
    )  # fmt: skip


def scope(client: Any, options: _sdk.Options, secret: bytes = PROCESS_SECRET) -> str | None:
    """The tenant scope of a request made through ``client`` with ``options`` (None: no stable
    tenant, as when the key is resolved per request), keyed by ``secret`` (the process's own, or
    the one all workers sharing a cache hold)."""
    parts = _sdk.tenant(client)
    if parts is None:
        return None
    if _sdk.selects_tenant(options):
        return _computed(client, options, secret)
    memos: dict[bytes, tuple[Any, str]] = client.__dict__.setdefault("_resilience_scope", {})
    memo = memos.get(secret)
    if memo is not None and memo[0] == parts:
        return memo[1]
    made = _computed(client, options, secret)
    # Copies of the default headers and query, so a change made to them in place is seen.
    kept = tuple(dict(part) if isinstance(part, dict) else part for part in parts)
    memos[secret] = (kept, made)
    return made
