"""Accumulate a streamed answer, so a stream can be reported when cut and cached when complete.

Feed every parsed stream event (a JSON object as a dict) to an assembler as it passes through the
chain. At any moment :attr:`~StreamAssembler.text` is what the caller has been shown so far (the
partial text an :class:`~resilient_openai._errors.IncompleteStreamError` reports). Once
:attr:`~StreamAssembler.finished`, :meth:`~StreamAssembler.completion` is the answer the same
request would have received without streaming, which is what the response cache stores, so a
later request, streamed or not, can be answered from it.

Pure accumulation: no I/O, no clock, no SDK objects. Not thread-safe; one assembler per stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = [
    "ChatStreamAssembler",
    "EventCounter",
    "ResponsesOutcome",
    "ResponsesStreamAssembler",
    "StreamAssembler",
    "assembler_for",
]


class StreamAssembler(Protocol):
    """What the chain needs from any assembler, whatever the operation."""

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take the next parsed event of the stream."""
        ...

    @property
    def text(self) -> str:
        """The answer text delivered so far ("" when the operation has none)."""
        ...

    @property
    def chunks(self) -> int:
        """How many events delivered part of the answer so far."""
        ...

    @property
    def finished(self) -> bool:
        """The upstream said the answer is complete."""
        ...

    @property
    def usage(self) -> dict[str, Any] | None:
        """Token usage, when the stream reported it."""
        ...

    @property
    def model(self) -> str | None:
        """The model the upstream says answered, once an event named it."""
        ...

    def completion(self) -> dict[str, Any]:
        """The equivalent non-streamed answer; raises ValueError before the stream finished."""
        ...


def _text_or_none(parts: list[str] | None) -> str | None:
    return None if parts is None else "".join(parts)


def _append(parts: list[str] | None, piece: object) -> list[str] | None:
    """Add a string fragment, starting the list on the first one (even an empty string)."""
    if not isinstance(piece, str):
        return parts
    if parts is None:
        return [piece]
    parts.append(piece)
    return parts


@dataclass(slots=True)
class _ToolCall:
    """One tool call of one choice, as its fragments arrive (keyed by the delta's ``index``)."""

    id: str | None = None
    type: str | None = None
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def as_message_part(self) -> dict[str, Any]:
        return {
            "id": self.id or "",
            "type": self.type or "function",
            "function": {"name": "".join(self.name), "arguments": "".join(self.arguments)},
        }


@dataclass(slots=True)
class _Choice:
    """Everything one choice (one ``index``) has said so far."""

    content: list[str] | None = None
    refusal: list[str] | None = None
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    function_call: _ToolCall | None = None
    audio: dict[str, Any] | None = None
    logprobs: dict[str, list[Any] | None] | None = None
    finish_reason: str | None = None

    def feed(self, choice: Mapping[str, Any]) -> bool:
        """Take one choice of one chunk; True when it carried part of the answer."""
        delta: Mapping[str, Any] = choice.get("delta") or {}
        carried = False
        content = delta.get("content")
        if isinstance(content, str):
            self.content = _append(self.content, content)
            carried = carried or bool(content)
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            self.refusal = _append(self.refusal, refusal)
            carried = carried or bool(refusal)
        for fragment in delta.get("tool_calls") or ():
            call = self.tool_calls.setdefault(int(fragment.get("index", 0)), _ToolCall())
            _feed_call(call, fragment, fragment.get("function"))
            carried = True
        if delta.get("function_call"):
            self.function_call = self.function_call or _ToolCall()
            _feed_call(self.function_call, {}, delta["function_call"])
            carried = True
        if delta.get("audio"):
            self._feed_audio(delta["audio"])
            carried = True
        if choice.get("logprobs"):
            self._feed_logprobs(choice["logprobs"])
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        return carried

    def _feed_audio(self, audio: Mapping[str, Any]) -> None:
        merged = self.audio if self.audio is not None else {"id": "", "data": "", "transcript": ""}
        for name in ("id", "expires_at"):
            if audio.get(name) is not None:
                merged[name] = audio[name]
        for name in ("data", "transcript"):
            if isinstance(audio.get(name), str):
                merged[name] += audio[name]
        self.audio = merged

    def _feed_logprobs(self, logprobs: Mapping[str, Any]) -> None:
        merged: dict[str, list[Any] | None] = self.logprobs or {"content": None, "refusal": None}
        for name in ("content", "refusal"):
            tokens = logprobs.get(name)
            if tokens is not None:
                merged[name] = [*(merged[name] or ()), *tokens]
        self.logprobs = merged

    def as_choice(self, index: int) -> dict[str, Any]:
        message: dict[str, Any] = {
            # A completion's message is always the assistant's, whatever role a delta named.
            "role": "assistant",
            "content": _text_or_none(self.content),
            "refusal": _text_or_none(self.refusal),
        }
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i].as_message_part() for i in sorted(self.tool_calls)]
        if self.function_call is not None:
            message["function_call"] = self.function_call.as_message_part()["function"]
        if self.audio is not None:
            message["audio"] = dict(self.audio)
        return {
            "index": index,
            "message": message,
            "finish_reason": self.finish_reason,
            "logprobs": self.logprobs,
        }


def _feed_call(call: _ToolCall, fragment: Mapping[str, Any], function: Mapping[str, Any] | None) -> None:
    """Merge one tool-call fragment: the id and type arrive once, name and arguments in pieces."""
    if fragment.get("id"):
        call.id = fragment["id"]
    if fragment.get("type"):
        call.type = fragment["type"]
    if function:
        if isinstance(function.get("name"), str):
            call.name.append(function["name"])
        if isinstance(function.get("arguments"), str):
            call.arguments.append(function["arguments"])


#: Chunk-level fields copied into the completion when the stream carried them.
_CHAT_OPTIONAL_FIELDS = ("system_fingerprint", "service_tier", "moderation")


class ChatStreamAssembler:
    """Rebuilds a ``chat.completion`` from its ``chat.completion.chunk`` events.

    Choices are kept apart by ``index`` (``n > 1``), and so are the tool calls within a choice;
    :attr:`text` follows choice 0. :attr:`finished` once every choice seen has a
    ``finish_reason``. A usage chunk (empty ``choices``, sent last with
    ``stream_options.include_usage``) fills :attr:`usage`.
    """

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._top: dict[str, Any] = {}
        self._usage: dict[str, Any] | None = None
        self._chunks = 0

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take the next ``chat.completion.chunk`` dict."""
        for name in ("id", "created", "model", *_CHAT_OPTIONAL_FIELDS):
            if event.get(name) is not None:
                self._top.setdefault(name, event[name])
        if event.get("usage") is not None:
            self._usage = dict(event["usage"])
        carried = False
        for choice in event.get("choices") or ():
            state = self._choices.setdefault(int(choice.get("index", 0)), _Choice())
            carried = state.feed(choice) or carried
        self._chunks += carried

    @property
    def text_only(self) -> bool:
        """Whether the answer so far is one choice's plain text (what a rescue can finish)."""
        if set(self._choices) - {0}:
            return False
        choice = self._choices.get(0)
        return choice is None or not (
            choice.refusal or choice.tool_calls or choice.function_call or choice.audio
        )

    @property
    def text(self) -> str:
        """Choice 0's content so far."""
        choice = self._choices.get(0)
        return "" if choice is None else _text_or_none(choice.content) or ""

    @property
    def chunks(self) -> int:
        """Chunks that carried content, a refusal, a tool-call or audio fragment (not role-only
        or usage chunks)."""
        return self._chunks

    @property
    def finished(self) -> bool:
        """Every choice seen so far has a ``finish_reason``."""
        return bool(self._choices) and all(c.finish_reason is not None for c in self._choices.values())

    @property
    def usage(self) -> dict[str, Any] | None:
        """The usage the stream reported, if it did."""
        return None if self._usage is None else dict(self._usage)

    @property
    def model(self) -> str | None:
        """The model named by the chunks."""
        model = self._top.get("model")
        return model if isinstance(model, str) else None

    def completion(self) -> dict[str, Any]:
        """The ``chat.completion`` dict the same request would have returned without streaming."""
        if not self.finished:
            raise ValueError("the chat stream has not finished: no complete answer to build")
        answer: dict[str, Any] = {
            "id": self._top.get("id", ""),
            "object": "chat.completion",
            "created": self._top.get("created", 0),
            "model": self._top.get("model", ""),
            "choices": [self._choices[i].as_choice(i) for i in sorted(self._choices)],
        }
        if self._usage is not None:
            answer["usage"] = dict(self._usage)
        for name in _CHAT_OPTIONAL_FIELDS:
            if name in self._top:
                answer[name] = self._top[name]
        return answer


ResponsesOutcome = Literal["completed", "incomplete", "failed"]

_TERMINAL_EVENTS: dict[str, ResponsesOutcome] = {
    "response.completed": "completed",
    "response.incomplete": "incomplete",
    "response.failed": "failed",
}

#: Delta events that are not the answer itself (the model's reasoning), so not counted in chunks.
_REASONING_DELTAS = frozenset({"response.reasoning_text.delta", "response.reasoning_summary_text.delta"})


class ResponsesStreamAssembler:
    """Follows a Responses API stream: its output text, and the final response it ends with.

    Only ``completed`` answers are worth caching; ``incomplete`` (a token limit) and ``failed``
    end the stream too, and :attr:`outcome` says which one did.
    """

    def __init__(self) -> None:
        self._text: list[str] = []
        self._chunks = 0
        self._response: Mapping[str, Any] | None = None
        self._outcome: ResponsesOutcome | None = None

    def feed(self, event: Mapping[str, Any]) -> None:
        """Take the next Responses stream event dict (one with a ``type``)."""
        kind = event.get("type")
        if not isinstance(kind, str):
            return
        if kind.endswith(".delta") and kind not in _REASONING_DELTAS:
            self._chunks += 1
            if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
                self._text.append(event["delta"])
        response = event.get("response")
        if isinstance(response, Mapping) and self._outcome is None:
            # created / in_progress carry early snapshots; the terminal event carries the answer.
            self._response = response
            self._outcome = _TERMINAL_EVENTS.get(kind)

    @property
    def text(self) -> str:
        """Output text so far, from ``response.output_text.delta`` events."""
        return "".join(self._text)

    @property
    def chunks(self) -> int:
        """Delta events that delivered part of the answer (reasoning deltas are not counted)."""
        return self._chunks

    @property
    def finished(self) -> bool:
        """A ``response.completed``, ``response.incomplete`` or ``response.failed`` was seen."""
        return self._outcome is not None

    @property
    def outcome(self) -> ResponsesOutcome | None:
        """How the stream ended, or None while it has not."""
        return self._outcome

    @property
    def usage(self) -> dict[str, Any] | None:
        """The final response's usage, once the stream has ended."""
        usage = self._response.get("usage") if self._response is not None and self.finished else None
        return dict(usage) if isinstance(usage, Mapping) else None

    @property
    def model(self) -> str | None:
        """The model named by the latest response snapshot."""
        model = None if self._response is None else self._response.get("model")
        return model if isinstance(model, str) else None

    def completion(self) -> dict[str, Any]:
        """The ``response`` object the terminal event carried (see :attr:`outcome` for which)."""
        if self._outcome is None or self._response is None:
            raise ValueError("the responses stream has not finished: no final response yet")
        return dict(self._response)


class EventCounter:
    """The assembler for operations we cannot rebuild: it only counts events.

    It never has text and never finishes, so such streams are reported by count and not cached.
    """

    def __init__(self) -> None:
        self._chunks = 0

    def feed(self, event: Mapping[str, Any]) -> None:
        """Count one event."""
        self._chunks += 1

    @property
    def text(self) -> str:
        """Always ""."""
        return ""

    @property
    def chunks(self) -> int:
        """Events seen."""
        return self._chunks

    @property
    def finished(self) -> bool:
        """Always False: the end of an unknown stream cannot be recognized."""
        return False

    @property
    def usage(self) -> dict[str, Any] | None:
        """Always None."""
        return None

    @property
    def model(self) -> str | None:
        """Always None."""
        return None

    def completion(self) -> dict[str, Any]:
        """Always raises ValueError: there is nothing to rebuild."""
        raise ValueError("events of this operation cannot be assembled into an answer")


def assembler_for(operation: str) -> StreamAssembler:
    """A fresh assembler for a stream of ``operation`` (``"chat.completions"``, ``"responses"``,
    or anything else, which gets an :class:`EventCounter`)."""
    if operation == "chat.completions":
        return ChatStreamAssembler()
    if operation == "responses":
        return ResponsesStreamAssembler()
    return EventCounter()
