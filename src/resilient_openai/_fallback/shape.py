"""What shape of answer a request asks for, and whether a fallback step can give it. Pure.

A live step (another model, another provider) is asked the same request, so it can always
answer as asked; the cache holds answers to the identical request. A canned step or a user
function answers locally, so it must honour what the request demands: a JSON object
(``response_format`` / ``text.format``), valid for the request's JSON schema, or a forced tool
call (``tool_choice="required"`` or a named function). :func:`refusal` says why a step cannot;
:func:`canned_reply` picks what a canned step answers; :func:`misfit` checks a function's text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from .._policy import FallbackStep

__all__ = ["PLAIN", "Reply", "Shape", "canned_reply", "misfit", "refusal", "schema_problem", "shape_of"]


@dataclass(frozen=True, slots=True)
class Shape:
    """What an answer to a request must be. ``schema``: the JSON schema its text must satisfy;
    ``json``: its text must be a JSON object; ``tool``: it must be a tool call (``tool_name``:
    of that function); ``tools``: the request's functions by name, with their parameter schemas."""

    operation: str = ""
    json: bool = False
    schema: Mapping[str, Any] | None = None
    tool: bool = False
    tool_name: str | None = None
    tools: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)


#: A request that takes any text.
PLAIN = Shape()


class Reply(NamedTuple):
    """What a canned step answers: ``text`` (a template when ``template``), or a tool call
    ``(name, arguments as JSON text)``."""

    text: str | None = None
    tool_call: tuple[str, str] | None = None
    template: bool = False


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _tools(operation: str, body: Mapping[str, Any]) -> dict[str, Mapping[str, Any] | None]:
    found: dict[str, Mapping[str, Any] | None] = {}
    tools = body.get("tools")
    for tool in tools if isinstance(tools, Sequence) else ():
        spec = _mapping(tool)
        if spec.get("type") != "function":
            continue
        function = _mapping(spec.get("function")) if operation == "chat.completions" else spec
        name = function.get("name")
        if isinstance(name, str):
            parameters = function.get("parameters")
            found[name] = parameters if isinstance(parameters, Mapping) else None
    return found


def shape_of(operation: str, body: Mapping[str, Any] | None) -> Shape:
    """The shape of answer ``body`` asks ``operation`` for."""
    if body is None or operation not in ("chat.completions", "responses"):
        return PLAIN
    chat = operation == "chat.completions"
    fmt = (
        _mapping(body.get("response_format")) if chat else _mapping(_mapping(body.get("text")).get("format"))
    )
    kind = fmt.get("type")
    schema: Mapping[str, Any] | None = None
    if kind == "json_schema":
        schema = _mapping(_mapping(fmt.get("json_schema")).get("schema") if chat else fmt.get("schema"))
    choice = body.get("tool_choice")
    named = _mapping(choice).get("type") == "function"
    tool_name = (_mapping(_mapping(choice).get("function")) if chat else _mapping(choice)).get("name")
    if kind not in ("json_schema", "json_object") and not named and choice != "required":
        return Shape(operation)
    return Shape(
        operation=operation,
        json=kind in ("json_schema", "json_object"),
        schema=schema,
        tool=named or choice == "required",
        tool_name=tool_name if named and isinstance(tool_name, str) else None,
        tools=_tools(operation, body),
    )


def canned_reply(step: FallbackStep, shape: Shape) -> Reply | str:
    """What canned ``step`` answers a request of ``shape`` with, or why it cannot answer it."""
    if shape.tool:
        return _tool_reply(step, shape)
    if shape.json:
        if step.json_value is None:
            return "the request asks for JSON and the canned step has no 'json' value"
        problem = schema_problem(step.json_value, shape.schema) if shape.schema is not None else None
        if problem is not None:
            return f"the canned 'json' value does not fit the request's schema: {problem}"
        return Reply(json.dumps(step.json_value, separators=(",", ":")))
    if step.text is not None:
        return Reply(step.text, template=True)
    if step.json_value is not None:
        return Reply(json.dumps(step.json_value, separators=(",", ":")))
    return "the request asks for text and the canned step has only a tool call"


def _tool_reply(step: FallbackStep, shape: Shape) -> Reply | str:
    call = step.tool_call
    if call is None:
        return "the request forces a tool call and the canned step has no 'tool_call'"
    if shape.tool_name is not None and call.name != shape.tool_name:
        return f"the request forces the tool {shape.tool_name!r}, the canned call is to {call.name!r}"
    if call.name not in shape.tools:
        return f"the canned tool call names {call.name!r}, which the request does not offer"
    parameters = shape.tools[call.name]
    problem = schema_problem(dict(call.arguments), parameters) if parameters is not None else None
    if problem is not None:
        return f"the canned tool call's arguments do not fit {call.name!r}: {problem}"
    return Reply(tool_call=(call.name, json.dumps(dict(call.arguments), separators=(",", ":"))))


def refusal(step: FallbackStep, shape: Shape) -> str | None:
    """Why ``step`` cannot answer a request of ``shape`` (None: it can, or may).

    Model and target steps are asked the same request; the cache holds answers to the identical
    request; a function may still decline or answer with text that does not fit (:func:`misfit`).
    """
    if step.kind == "canned":
        reply = canned_reply(step, shape)
        return reply if isinstance(reply, str) else None
    if step.kind == "function" and shape.tool:
        return "the request forces a tool call and a function answers with text"
    return None


def misfit(shape: Shape, text: str) -> str | None:
    """Why ``text`` does not answer a request of ``shape`` (None: it does)."""
    if not shape.json:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return "the request asks for JSON and the answer is not JSON"
    if shape.schema is None:
        return None if isinstance(value, dict) else "the request asks for a JSON object"
    return schema_problem(value, shape.schema)


_TYPES: Mapping[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}


def _is(value: object, kind: str) -> bool:
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    if kind == "integer" and isinstance(value, float):
        return value.is_integer()
    return isinstance(value, _TYPES.get(kind, (object,)))


def schema_problem(
    value: object, schema: Mapping[str, Any] | None, root: Mapping[str, Any] | None = None
) -> str | None:
    """Why ``value`` does not satisfy ``schema`` (None: it does).

    The subset OpenAI's strict structured outputs use: ``type``, ``properties``, ``required``,
    ``additionalProperties``, ``items``, ``enum``, ``const``, ``anyOf`` and local ``$ref``\\ s to
    ``$defs`` / ``definitions``. Other keywords are not checked.
    """
    if schema is None:
        return None
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target: Any = root
        for part in ref.removeprefix("#/").split("/") if ref.startswith("#/") else ["?"]:
            target = _mapping(target).get(part)
        if not isinstance(target, Mapping):
            return f"unresolvable $ref {ref!r}"
        return schema_problem(value, target, root)
    any_of = schema.get("anyOf")
    if (
        isinstance(any_of, Sequence)
        and any_of
        and all(schema_problem(value, _mapping(option), root) is not None for option in any_of)
    ):
        return "matches none of anyOf"
    kinds = schema.get("type")
    allowed = [kinds] if isinstance(kinds, str) else list(kinds) if isinstance(kinds, Sequence) else []
    if allowed and not any(_is(value, kind) for kind in allowed):
        return f"{type(value).__name__} where the schema asks for {' or '.join(allowed)}"
    enum = schema.get("enum")
    if isinstance(enum, Sequence) and value not in enum:
        return f"{value!r} is not one of the schema's enum"
    if "const" in schema and value != schema["const"]:
        return f"{value!r} is not the schema's const"
    if isinstance(value, dict):
        return _object_problem(value, schema, root)
    items = schema.get("items")
    if isinstance(value, list) and isinstance(items, Mapping):
        for index, item in enumerate(value):
            problem = schema_problem(item, items, root)
            if problem is not None:
                return f"[{index}]: {problem}"
    return None


def _object_problem(value: dict[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any]) -> str | None:
    properties = _mapping(schema.get("properties"))
    required = schema.get("required")
    for key in required if isinstance(required, Sequence) else ():
        if key not in value:
            return f"missing required {key!r}"
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if key in properties:
            problem = schema_problem(item, _mapping(properties[key]), root)
        elif extra is False:
            problem = "not allowed (additionalProperties is false)"
        else:
            problem = schema_problem(item, extra, root) if isinstance(extra, Mapping) else None
        if problem is not None:
            return f"{key}: {problem}"
    return None
