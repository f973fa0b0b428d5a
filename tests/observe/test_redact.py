"""Redaction: keys and tokens never reach a handler, from our loggers, the SDK's, or their children."""

from __future__ import annotations

import io
import logging
import sys
from typing import TYPE_CHECKING

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resilient_openai.observe.redact import (
    DEFAULT_LOGGERS,
    REDACTED,
    RedactingFilter,
    install_redaction,
    redact,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

SENTINEL = "sk-proj-SENTINEL0123456789abcdef"
#: The part of the sentinel that identifies it; ``sk-proj-`` alone is allowed to stay.
SECRET = "SENTINEL0123456789abcdef"
AZURE_KEY = "0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"using {SENTINEL} now", "using sk-proj-[REDACTED] now"),
        ("sk-abcdefghijklmnopqrstuvwxyz012345", "sk-[REDACTED]"),
        ("sk-svcacct-AAAAAAAAAAAAAAAAAAAAAAAA", "sk-svcacct-[REDACTED]"),
        ("sk-admin-AAAAAAAAAAAAAAAAAAAAAAAA", "sk-admin-[REDACTED]"),
        ("sess-AAAAAAAAAAAAAAAAAAAAAAAA", "sess-[REDACTED]"),
        (f"Authorization: Bearer {SENTINEL}", "Authorization: Bearer [REDACTED]"),
        ("authorization: bearer abc.def-ghi", "authorization: bearer [REDACTED]"),
        ("Proxy-Authorization: Basic dXNlcjpwYXNz", "Proxy-Authorization: Basic [REDACTED]"),
        ("token was Bearer eyJhbGciOi.JIUzI1.NiJ9= ok", "token was Bearer [REDACTED] ok"),
        (
            f"{{'Authorization': 'Bearer {SENTINEL}', 'api-key': '{AZURE_KEY}'}}",
            "{'Authorization': 'Bearer [REDACTED]', 'api-key': '[REDACTED]'}",
        ),
        (f"api-key: {AZURE_KEY}", "api-key: [REDACTED]"),
        (f"x-api-key: {AZURE_KEY}", "x-api-key: [REDACTED]"),
        (f"ocp-apim-subscription-key: {AZURE_KEY}", "ocp-apim-subscription-key: [REDACTED]"),
        (f'{{"api_key": "{SENTINEL}"}}', '{"api_key": "[REDACTED]"}'),
        (f'\\"api_key\\": \\"{SENTINEL}\\"', '\\"api_key\\": \\"[REDACTED]\\"'),
        (f"OpenAI(api_key='{SENTINEL}', timeout=5)", "OpenAI(api_key='[REDACTED]', timeout=5)"),
        (f"OPENAI_API_KEY={SENTINEL}", "OPENAI_API_KEY=[REDACTED]"),
        (f"export AZURE_OPENAI_API_KEY='{AZURE_KEY}'", "export AZURE_OPENAI_API_KEY='[REDACTED]'"),
        (
            f"[(b'api-key', b'{AZURE_KEY}'), (b'accept', b'json')]",
            "[(b'api-key', b'[REDACTED]'), (b'accept', b'json')]",
        ),
        (f"GET /deployments?api-key={AZURE_KEY}&v=1", "GET /deployments?api-key=[REDACTED]&v=1"),
        (f"q=1&key%3D{SENTINEL}", "q=1&key%3Dsk-proj-[REDACTED]"),
    ],
)
def test_redact_masks(text: str, expected: str) -> None:
    """Every supported form of key or token is masked, keeping only a non-identifying prefix."""
    assert redact(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "retrying chat.completions (model gpt-4o-mini) on primary in 0.50s after rate_limited",
        "HTTP Request: POST https://api.openai.com/v1/chat/completions 200 OK",
        "api_key=None",
        '{"api_key": null}',
        "The api_key client option must be set by passing api_key or setting OPENAI_API_KEY",
        "task-0123456789abcdefghij done",
        "sk-short",
        "cache key 9f2c1a built",
        "{'api-key': '<redacted>'}",
    ],
)
def test_redact_leaves_text_without_secrets(text: str) -> None:
    """Text without a secret comes back unchanged (a missing key stays visible as None)."""
    assert redact(text) == text


@pytest.mark.parametrize(
    "text",
    [
        f"Authorization: Bearer {SENTINEL}",
        f"{{'api-key': '{AZURE_KEY}', 'authorization': 'Bearer {SENTINEL}'}}",
        f"key {SENTINEL}",
    ],
)
def test_redact_is_idempotent(text: str) -> None:
    """Masking masked text changes nothing, so several filters on one record are harmless."""
    once = redact(text)
    assert redact(once) == once


BOUNDARY = st.text(alphabet=" \t\n\"'=:,;()[]{}<>/", max_size=5)
KEY_BODY = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-", min_size=20, max_size=80
)
KIND = st.sampled_from(["sk-", "sk-proj-", "sk-svcacct-", "sk-admin-", "sess-"])


@settings(max_examples=200, deadline=None)
@given(before=BOUNDARY, kind=KIND, body=KEY_BODY, after=BOUNDARY)
def test_no_generated_key_survives(before: str, kind: str, body: str, after: str) -> None:
    """Any OpenAI-style key between token boundaries loses its identifying body."""
    masked = redact(f"{before}{kind}{body}{after}")
    assert body not in masked
    assert REDACTED in masked


def test_redact_is_linear_on_long_words() -> None:
    """A long word without secrets is scanned once: no catastrophic backtracking."""
    blob = "api_" + "a_" * 200_000 + "key"
    assert redact(blob) == blob


# -- the filter on a single record ------------------------------------------------------------


def _record(msg: str, *args: object, **fields: object) -> logging.LogRecord:
    record = logging.LogRecord("openai._base_client", logging.DEBUG, __file__, 1, msg, args or None, None)
    record.__dict__.update(fields)
    return record


def test_filter_formats_then_masks_then_clears_args() -> None:
    """A key passed as a %-argument is caught after formatting, and the arguments are dropped."""
    record = _record("Request options: %s", {"headers": {"Authorization": f"Bearer {SENTINEL}"}})
    assert RedactingFilter().filter(record) is True
    assert record.args is None
    assert SECRET not in record.getMessage()
    assert "Bearer [REDACTED]" in record.getMessage()


def test_filter_masks_exception_text_and_drops_the_live_exception() -> None:
    """The traceback is rendered, masked, and the exception object is not left for formatters."""
    try:
        raise ValueError(f"bad key {SENTINEL}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("openai", logging.ERROR, __file__, 1, "failed", None, exc_info)
    RedactingFilter().filter(record)
    assert record.exc_info is None
    assert record.exc_text is not None
    assert "ValueError: bad key sk-proj-[REDACTED]" in record.exc_text
    assert SECRET not in logging.Formatter().format(record)


def test_filter_can_keep_the_live_exception() -> None:
    """``keep_exc_info=True`` keeps the exception for handlers that need the object."""
    try:
        raise ValueError(f"bad key {SENTINEL}")
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("openai", logging.ERROR, __file__, 1, "failed", None, exc_info)
    RedactingFilter(keep_exc_info=True).filter(record)
    assert record.exc_info is exc_info
    assert record.exc_text is not None
    assert SECRET not in record.exc_text


def test_filter_masks_extra_fields_without_mutating_them() -> None:
    """String extras are masked; a structure holding a secret is replaced by its masked repr."""
    headers = {"api-key": AZURE_KEY}
    record = _record("sending", header_line=f"api-key: {AZURE_KEY}", headers=headers, attempt=2)
    RedactingFilter().filter(record)
    assert record.__dict__["header_line"] == "api-key: [REDACTED]"
    assert record.__dict__["headers"] == "{'api-key': '[REDACTED]'}"
    assert record.__dict__["attempt"] == 2
    assert headers == {"api-key": AZURE_KEY}


def test_filter_survives_a_broken_format_string() -> None:
    """A message whose arguments do not fit is still masked, and the filter does not raise."""
    record = _record("two args %s %s", SENTINEL)
    assert RedactingFilter().filter(record) is True
    assert SECRET not in record.getMessage()


def test_filter_masks_stack_info() -> None:
    """``stack_info`` text is masked like the traceback."""
    record = _record("here")
    record.stack_info = f"Stack (most recent call last):\n  api_key = '{SENTINEL}'"
    RedactingFilter().filter(record)
    assert SECRET not in record.stack_info


# -- install_redaction: whole logger hierarchies, whatever handlers come later -----------------


@pytest.fixture
def uninstall() -> Iterator[Callable[[], None]]:
    """Redaction installed on the default loggers for one test, then removed."""
    undo = install_redaction()
    yield undo
    undo()


@pytest.fixture
def output(uninstall: Callable[[], None]) -> Iterator[io.StringIO]:
    """What a handler added to the root logger *after* installation prints, at DEBUG everywhere."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    saved = root.level, {name: logging.getLogger(name).level for name in DEFAULT_LOGGERS}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    for name in DEFAULT_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    yield stream
    root.removeHandler(handler)
    root.setLevel(saved[0])
    for name, level in saved[1].items():
        logging.getLogger(name).setLevel(level)


def _log_every_way(log: logging.Logger) -> None:
    log.debug("message with %s inline", SENTINEL)
    log.debug("args: %s", SENTINEL)
    log.debug(f"f-string: {SENTINEL}")
    log.debug("Request options: %r", {"headers": {"Authorization": f"Bearer {SENTINEL}"}})
    log.debug("dict args: %(headers)s", {"headers": {"api-key": SENTINEL}})
    log.debug("stack", stack_info=True)
    try:
        raise RuntimeError(f"upstream rejected {SENTINEL}")
    except RuntimeError:
        log.exception("call failed")


@pytest.mark.parametrize(
    "logger_name",
    ["openai", "openai._base_client", "openai.resources.chat", "httpx2", "httpcore2.connection",
     "resilient_openai", "resilient_openai._chain.retry"],
)  # fmt: skip
def test_no_secret_reaches_a_later_handler(output: io.StringIO, logger_name: str) -> None:
    """Message, args, f-string, header dict and exception text from any logger in the hierarchy are masked."""
    _log_every_way(logging.getLogger(logger_name))
    printed = output.getvalue()
    assert f"{logger_name} f-string: sk-proj-[REDACTED]" in printed
    assert "Bearer [REDACTED]" in printed
    assert "RuntimeError: upstream rejected sk-proj-[REDACTED]" in printed
    assert SECRET not in printed


def test_no_secret_reaches_pytest_capture(
    uninstall: Callable[[], None], caplog: pytest.LogCaptureFixture
) -> None:
    """pytest's own capture handler, like any other, only sees masked records."""
    caplog.set_level(logging.DEBUG)
    _log_every_way(logging.getLogger("openai._base_client"))
    assert caplog.records
    assert SECRET not in caplog.text
    assert all(SECRET not in record.getMessage() for record in caplog.records)


def test_other_loggers_are_left_alone(uninstall: Callable[[], None]) -> None:
    """Records of loggers outside the named hierarchies keep their arguments untouched."""
    factory = logging.getLogRecordFactory()
    for name in ("openai_extras", "myapp", "httpx2x"):
        record = factory(name, logging.INFO, __file__, 1, "value %s", (SENTINEL,), None)
        assert record.args == (SENTINEL,)
    inside = factory("openai.lib", logging.INFO, __file__, 1, "value %s", (SENTINEL,), None)
    assert inside.args is None


def test_named_loggers_carry_the_filter(uninstall: Callable[[], None]) -> None:
    """Each named logger gets one RedactingFilter, which masks ``extra`` fields of its records."""
    for name in DEFAULT_LOGGERS:
        filters = [f for f in logging.getLogger(name).filters if isinstance(f, RedactingFilter)]
        assert len(filters) == 1


def test_uninstall_restores_the_factory_and_filters() -> None:
    """Undoing the installation puts back the previous factory and removes the filters it added."""
    before = logging.getLogRecordFactory()
    undo = install_redaction("tests.observe.redact_undo")
    assert logging.getLogRecordFactory() is not before
    undo()
    assert logging.getLogRecordFactory() is before
    assert not logging.getLogger("tests.observe.redact_undo").filters


def test_uninstall_under_a_later_factory_goes_inactive() -> None:
    """A factory installed on top of ours stays working; ours just stops masking."""
    original = logging.getLogRecordFactory()
    undo = install_redaction("tests.observe.redact_stack")
    ours = logging.getLogRecordFactory()

    def later(*args: object, **kwargs: object) -> logging.LogRecord:
        return ours(*args, **kwargs)

    logging.setLogRecordFactory(later)
    try:
        undo()
        assert logging.getLogRecordFactory() is later
        record = later("tests.observe.redact_stack", logging.INFO, __file__, 1, "v %s", (SENTINEL,), None)
        assert record.args == (SENTINEL,)
    finally:
        logging.setLogRecordFactory(original)


def test_handler_filter_covers_extras_from_child_loggers(output: io.StringIO) -> None:
    """The documented complement: a RedactingFilter on the handler masks extras of child loggers."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s %(headers)s"))
    handler.addFilter(RedactingFilter())
    child = logging.getLogger("openai._base_client")
    child.addHandler(handler)
    try:
        child.debug("sending", extra={"headers": {"Authorization": f"Bearer {SENTINEL}"}})
    finally:
        child.removeHandler(handler)
    assert "sending {'Authorization': 'Bearer [REDACTED]'}" in stream.getvalue()
