"""Circuit breakers as a permit protocol, over pybreaker's state names and storages.

Acquire a :class:`Permit` (or get :class:`~resilient_openai.CircuitOpenError` at once), make the
call with no lock held, then record success, failure or *ignored* on the permit. Inside, the
same layers as Polly's and resilience4j's breakers: :class:`CircuitBreaker` (the thread-safe
shell, events published after its lock is released) -> a pure state machine with a table of
legal transitions -> health metrics (failures in a row, a time-bucketed sliding window).
:class:`BreakerRegistry` keeps one breaker per target, and a :class:`QuotaLedger` of the
credentials out of quota on them (quota belongs to a credential, not to the target).
With ``[shared]`` in the policy, breakers are :class:`SharedCircuitBreaker` over Redis
(``_redis.py``, ``_lua.py``): one state for every worker.
"""

from ._breaker import BreakerSnapshot, CircuitBreaker, Permit
from ._quota import QuotaLedger, quota_hold
from ._registry import AnyBreaker, BreakerRegistry, default_key
from ._shared import SharedCircuitBreaker
from ._state import CLOSED, HALF_OPEN, ISOLATED, OPEN, IllegalTransitionError

__all__ = [
    "CLOSED",
    "HALF_OPEN",
    "ISOLATED",
    "OPEN",
    "AnyBreaker",
    "BreakerRegistry",
    "BreakerSnapshot",
    "CircuitBreaker",
    "IllegalTransitionError",
    "Permit",
    "QuotaLedger",
    "SharedCircuitBreaker",
    "default_key",
    "quota_hold",
]
