"""Checks a request before it is sent, so one that cannot succeed never costs an attempt. Pure.

Cheap rules only: messages present, known roles, parameters in range, and (when the policy
knows the model's context window) a prompt-size estimate. A request that fails one is refused
with :class:`~resilient_openai.RequestRejectedError` and never touches a breaker.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from typing import Any

from ._policy import ValidationPolicy

__all__ = ["Problem", "check_request", "context_window", "estimate_tokens", "oversized"]

_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})
_RANGES: Mapping[str, tuple[float, float]] = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
_AT_LEAST_ONE = ("n", "max_tokens", "max_completion_tokens", "max_output_tokens")
_CHECKED = frozenset(_RANGES) | frozenset(_AT_LEAST_ONE)

Problem = tuple[str, str]


def estimate_tokens(body: Mapping[str, Any]) -> int:
    """A deliberately rough upper-side estimate: four characters a token, over all text parts."""
    chars = 0
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, Mapping) else None
            if isinstance(content, str):
                chars += len(content)
            elif isinstance(content, list):
                chars += sum(len(str(part.get("text", ""))) for part in content if isinstance(part, Mapping))
    prompt = body.get("input")
    if isinstance(prompt, str):
        chars += len(prompt)
    return chars // 4


def context_window(policy: ValidationPolicy, model: str | None) -> int | None:
    """The configured window for ``model``: the longest matching name prefix wins."""
    if not model:
        return None
    best: tuple[int, int] | None = None
    for prefix, window in policy.context_windows.items():
        if model.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), window)
    return best[1] if best else None


def check_request(operation: str, body: Mapping[str, Any]) -> Problem | None:
    """The first problem with this request as ``(rule, message)``, or None when it may be sent.

    A prompt too large for the model's window is not judged here: the fallback walk decides
    whether a larger-context model takes it (:func:`oversized`).

    On the success path of every call: only the keys actually present are looked at.
    """
    if operation == "chat.completions":
        messages = body.get("messages")
        if type(messages) is not list or not messages:
            return "messages_present", "chat.completions needs at least one message"
        for index, message in enumerate(messages):
            role = message.get("role") if isinstance(message, dict) else None
            if role not in _ROLES:
                allowed = ", ".join(sorted(_ROLES))
                return "known_role", f"messages[{index}].role is {role!r}; allowed: {allowed}"
    present = _CHECKED & body.keys()
    if present:
        problem = _check_ranges(body, present)
        if problem is not None:
            return problem
    return None


def _check_ranges(body: Mapping[str, Any], present: AbstractSet[str]) -> Problem | None:
    for name in sorted(present):
        value = body[name]
        if not isinstance(value, int | float) or isinstance(value, bool):
            continue
        bounds = _RANGES.get(name)
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return "parameter_range", f"{name}={value!r} is out of range [{bounds[0]:g}, {bounds[1]:g}]"
        if bounds is None and isinstance(value, int) and value < 1:
            return "parameter_range", f"{name}={value!r} must be >= 1"
    return None


def oversized(policy: ValidationPolicy, model: str | None, body: Mapping[str, Any]) -> bool:
    """Whether the prompt is estimated larger than ``model``'s configured context window."""
    if not policy.enabled or not policy.context_windows:
        return False
    window = context_window(policy, model)
    return window is not None and estimate_tokens(body) > window
