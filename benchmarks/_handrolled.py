"""The baseline people write by hand: tenacity retries, a pybreaker breaker and a TTLCache fallback.

Written the way it usually is: a ``@retry`` from tenacity (3 attempts, random exponential
backoff, on connection errors, timeouts, 429 and 5xx) around ``pybreaker.CircuitBreaker.call``,
and on a final failure one call to ``fallback_model`` (when given), then the last good answer
for the same request from a ``cachetools.TTLCache`` guarded by a lock. It is a fair, typical
comparison, not a straw man: it has no deadline, no per-attempt timeout, no provenance, and
pybreaker holds its lock across the wrapped call.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any

import openai
import pybreaker
from cachetools import TTLCache
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_random_exponential

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

__all__ = ["HandRolled"]

RETRYABLE = (
    openai.APIConnectionError,  # includes APITimeoutError
    openai.RateLimitError,
    openai.InternalServerError,
)


class HandRolled:
    """``create(**kwargs)`` -> ``(completion, served_from_cache)`` through retry, breaker, cache."""

    def __init__(
        self,
        client: openai.OpenAI,
        *,
        fail_max: int = 5,
        reset_timeout: float = 30.0,
        attempts: int = 3,
        backoff: float = 0.5,
        backoff_max: float = 8.0,
        cache_entries: int = 1024,
        cache_ttl: float = 3600.0,
        fallback_model: str | None = None,
    ) -> None:
        self.client = client
        self.fallback_model = fallback_model
        self.breaker: Any = pybreaker.CircuitBreaker(fail_max=fail_max, reset_timeout=reset_timeout)
        self.cache: TTLCache[str, ChatCompletion] = TTLCache(maxsize=cache_entries, ttl=cache_ttl)
        self.lock = threading.Lock()
        self._with_retries = retry(
            stop=stop_after_attempt(attempts),
            wait=wait_random_exponential(multiplier=backoff, max=backoff_max),
            retry=retry_if_exception_type(RETRYABLE),
            reraise=True,
        )(self._once)

    def _once(self, **kwargs: Any) -> ChatCompletion:
        completion: ChatCompletion = self.breaker.call(self.client.chat.completions.create, **kwargs)
        return completion

    def create(self, **kwargs: Any) -> tuple[ChatCompletion, bool]:
        """One chat completion; on a final failure the fallback model's answer, else the cached one.

        A fallback model's answer is not from the cache (``False``); its ``model`` names it.
        """
        key = json.dumps(kwargs, sort_keys=True, default=str)
        try:
            completion = self._with_retries(**kwargs)
        except (openai.APIError, pybreaker.CircuitBreakerError):
            if self.fallback_model is not None:
                try:
                    fallback: ChatCompletion = self.client.chat.completions.create(
                        **{**kwargs, "model": self.fallback_model}
                    )
                    return fallback, False
                except openai.APIError:
                    pass
            with self.lock:
                cached = self.cache.get(key)
            if cached is None:
                raise
            return cached, True
        with self.lock:
            self.cache[key] = completion
        return completion, False
