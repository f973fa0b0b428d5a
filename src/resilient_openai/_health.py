"""Operator handles on a resilient client: its breakers, and a health snapshot for endpoints."""

from __future__ import annotations

import dataclasses
from typing import Any

from ._breaker import BreakerRegistry
from ._chain import Chain

__all__ = ["breakers", "health"]


def _chain(client: object) -> Chain:
    chain = getattr(type(client), "_resilience", None)
    if not isinstance(chain, Chain):
        raise TypeError(f"{type(client).__name__} is not a client made by resilient_openai.resilient()")
    return chain


def breakers(client: object) -> BreakerRegistry:
    """The breakers of a resilient client: ``isolate``, ``close``, ``reset`` by name; ``snapshot()``."""
    return _chain(client).breakers


def health(client: object) -> dict[str, Any]:
    """A JSON-serializable snapshot of every breaker, retry budget and the cache, for ``/health``.

    ``status`` is ``"ok"`` when every breaker is closed, ``"degraded"`` otherwise. Each entry of
    ``budgets`` holds a target's first attempts (``requests``) and ``retries`` in the budget's
    window, the retries it allows (``limit``) and whether it is ``exhausted``. ``cache["shared"]``
    is the Redis level when ``[shared]`` shares the cache (``state`` ``"up"`` or ``"down"``,
    ``hits``, ``misses``, ``stored``, ``dropped``, ``refused``), else None. Holds names,
    states, counts and times only: never keys, prompts or answers.
    """
    chain = _chain(client)
    snapshots = [dataclasses.asdict(s) for s in chain.breakers.snapshot()]
    cache: dict[str, Any] | None = None
    if chain.cache is not None:
        cache = dataclasses.asdict(chain.cache.stats())
        shared = chain.shared_cache
        cache["shared"] = dataclasses.asdict(shared.stats()) if shared is not None else None
    return {
        "status": "ok" if all(s["state"] == "closed" for s in snapshots) else "degraded",
        "breakers": snapshots,
        "budgets": [dataclasses.asdict(s) for s in chain.budgets.snapshot()],
        "cache": cache,
    }
