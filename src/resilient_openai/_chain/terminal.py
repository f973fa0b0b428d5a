"""The end of the chain: the SDK's own ``request`` on the current target, with its retries off."""

from __future__ import annotations

from typing import Any

from ._call import Call

__all__ = ["async_terminal", "sync_terminal"]


def sync_terminal(call: Call) -> Any:
    """Send the current attempt with the SDK (threads)."""
    target = call.target
    assert target is not None
    return target.send(call.cast_to, call.send_options, stream=call.stream, stream_cls=call.stream_cls)


async def async_terminal(call: Call) -> Any:
    """Send the current attempt with the SDK (asyncio tasks)."""
    target = call.target
    assert target is not None
    return await target.send(call.cast_to, call.send_options, stream=call.stream, stream_cls=call.stream_cls)
