"""Keep API keys and bearer tokens out of logs: :func:`redact` for text, :class:`RedactingFilter`
for records, :func:`install_redaction` for the loggers of ``resilient_openai`` and the SDK.

What is masked, and how
-----------------------
* A value in a credential slot is replaced entirely by ``[REDACTED]``: ``Authorization: Bearer
  [REDACTED]``, ``api-key: [REDACTED]``, ``"api_key": "[REDACTED]"``, ``('x-api-key', '[REDACTED]')``,
  ``OPENAI_API_KEY=[REDACTED]``. Slots are ``Authorization`` / ``Proxy-Authorization``,
  ``Ocp-Apim-Subscription-Key`` and any name ending in ``api-key`` / ``api_key`` / ``apikey``
  (``x-api-key``, Azure's ``api-key`` header, ``AZURE_OPENAI_API_KEY``...), in header, JSON, dict
  repr, keyword and environment-variable form. ``None`` / ``null`` are left visible: "the key was
  missing" is worth seeing.
* ``Bearer <token>`` anywhere becomes ``Bearer [REDACTED]``.
* A bare OpenAI-style key in free text (``sk-``, ``sk-proj-``, ``sk-svcacct-``, ``sk-admin-``,
  ``sess-``) keeps only its kind prefix: ``sk-proj-[REDACTED]``. That prefix is the same for every
  key of its kind, so it tells an operator *which kind* of key leaked and identifies none. No
  trailing characters are kept: even the last four narrow the search for a key.

Azure keys are 32 hex digits with no prefix; they are only recognised in a credential slot (a bare
hex string cannot be told apart from a request id or a hash).

Redaction errs on the side of masking: ``Bearer authentication`` loses its second word. That is
the price of never letting a real token through.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ["DEFAULT_LOGGERS", "REDACTED", "RedactingFilter", "install_redaction", "redact"]

#: What a secret is replaced with.
REDACTED = "[REDACTED]"

#: The loggers :func:`install_redaction` protects when given none: ours, the SDK's and its transport's.
DEFAULT_LOGGERS: tuple[str, ...] = ("resilient_openai", "openai", "httpx2", "httpcore2")

# A value ends at whitespace, a quote, a separator or a bracket; brackets also keep an already
# masked "[REDACTED]" (or the SDK's own "<redacted>") from being masked twice, and a value is never
# an auth scheme, so "Authorization: Bearer [REDACTED]" stays as it is.
_VALUE = r"""(?!(?:None|null)\b|(?:bearer|basic|token)\s)[^\s"'\\,;&<>()\[\]{}]+"""

# One pass, three alternatives. Every alternative starts at a token boundary (lookbehind; for a bare
# key also right after a %-escape, as in ``api_key%3Dsk-...``), so no match backtracks across long
# words: the scan stays linear.
_SECRETS = re.compile(
    rf"""
    (?P<slot>
        (?<![\w-])
        (?:(?:proxy-)?authorization|ocp-apim-subscription-key|(?:[a-z0-9]+[_-]){{0,3}}api[_-]?key)
        (?![\w-])
        (?:\\*["']?\s*[:=]\s*(?:b?\\*["'])?|\\*["']\s*,\s*b?\\*["'])
        (?:(?:bearer|basic|token)\s+)?
    ){_VALUE}
    |
    (?P<scheme>(?<![\w-])bearer\s+)[A-Za-z0-9\-._~+/]+=*
    |
    (?:(?<![A-Za-z0-9])|(?<=%[0-9a-f]{{2}}))
    (?P<kind>sk-(?:proj-|svcacct-|admin-)?|sess-)[A-Za-z0-9_-]{{16,}}
    """,
    re.IGNORECASE | re.VERBOSE | re.ASCII,
)

# Every alternative above needs one of these (ASCII, so ``str.lower`` finds them exactly). Most log
# lines have none, and a few substring checks cost a fraction of the full scan.
_TRIGGERS = ("key", "sk-", "sess-", "bearer", "authorization")


def _mask(match: re.Match[str]) -> str:
    kept = match.group("slot") or match.group("scheme") or match.group("kind")
    return f"{kept}{REDACTED}"


def redact(text: str) -> str:
    """``text`` with every API key and bearer token it contains masked (see the module docs)."""
    lowered = text.lower()
    if not any(trigger in lowered for trigger in _TRIGGERS):
        return text
    return _SECRETS.sub(_mask, text)


# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_PLAIN = (int, float, bool, type(None))
_FORMATTER = logging.Formatter()


def _scrub(record: logging.LogRecord, *, keep_exc_info: bool, extras: bool) -> None:
    """Mask secrets in everything of ``record`` a handler or formatter could print."""
    try:
        message = record.getMessage()
    except Exception:
        # A broken format string must not break the caller's logging call; keep what it said.
        message = f"{record.msg!s} {record.args!r}"
    record.msg = redact(message)
    record.args = None
    if "message" in record.__dict__:
        # A formatter that ran before this filter left the unmasked text behind.
        record.message = record.msg
    if record.exc_info and not record.exc_text:
        record.exc_text = _FORMATTER.formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = redact(record.exc_text)
        if not keep_exc_info:
            # The standard Formatter prints exc_text whenever it is set; dropping exc_info stops
            # formatters that re-render the live exception (and its message) from bypassing it.
            record.exc_info = None
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    if extras:
        for key, value in list(record.__dict__.items()):
            if key in _RECORD_ATTRS or isinstance(value, _PLAIN):
                continue
            shown = value if isinstance(value, str) else repr(value)
            masked = redact(shown)
            if masked != shown:
                # A structure holding a secret is replaced by its masked repr, never mutated:
                # it belongs to the caller.
                record.__dict__[key] = masked


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, arguments, exception and stack text, and ``extra`` fields.

    It never drops a record. The message is formatted with its arguments first (so a key passed as
    an argument is caught), masked, and the arguments cleared. By default the live exception is
    dropped once its traceback text is rendered and masked (standard formatters print that text
    unchanged); pass ``keep_exc_info=True`` for handlers that need the exception object itself,
    knowing they may print its unmasked message.

    On a logger it only sees records logged on that very logger; on a handler it sees every record
    the handler emits, including those propagated from child loggers. See :func:`install_redaction`.
    """

    def __init__(self, name: str = "", *, keep_exc_info: bool = False) -> None:
        super().__init__(name)
        self.keep_exc_info = keep_exc_info

    def filter(self, record: logging.LogRecord) -> bool:
        """Scrub ``record`` in place; always keep it."""
        _scrub(record, keep_exc_info=self.keep_exc_info, extras=True)
        return True


_install_lock = threading.Lock()


def install_redaction(*logger_names: str, keep_exc_info: bool = False) -> Callable[[], None]:
    """Make sure no record from these loggers, or any logger below them, carries a secret.

    ``logger_names`` default to :data:`DEFAULT_LOGGERS`. Returns a function that undoes the
    installation (tests use it); call this once, at start-up.

    Where it attaches, and why: a filter on a logger only sees records logged on that exact
    logger, not those propagated from its children (``openai._base_client`` is not ``openai``),
    and a filter on a handler only protects the handlers that exist when it is installed, while
    applications often configure logging later (``dictConfig``, ``basicConfig``, a server's own
    setup). So the process's LogRecord factory is wrapped: every record whose logger is one of
    ``logger_names`` or below one is masked as it is created, before any logger filter, handler or
    formatter sees it, whatever the level and whenever the handlers were added. A
    :class:`RedactingFilter` is also put on each named logger, so ``extra`` fields of records
    logged there are masked too. ``extra`` fields of records from *child* loggers are only masked
    by a :class:`RedactingFilter` on the handler; add one there if your handlers print extras
    (``logging.config.dictConfig``: ``"filters": {"redact": {"()":
    "resilient_openai.observe.redact.RedactingFilter"}}``).
    """
    names = logger_names or DEFAULT_LOGGERS
    prefixes = tuple(f"{name}." for name in names)
    active = True

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if active and (record.name in names or record.name.startswith(prefixes)):
            # ``extra`` is attached after the factory returns: a RedactingFilter on the logger
            # or the handler covers it.
            _scrub(record, keep_exc_info=keep_exc_info, extras=False)
        return record

    added: list[tuple[logging.Logger, RedactingFilter]] = []
    with _install_lock:
        previous = logging.getLogRecordFactory()
        logging.setLogRecordFactory(factory)
        for name in names:
            logger = logging.getLogger(name)
            if not any(isinstance(f, RedactingFilter) for f in logger.filters):
                log_filter = RedactingFilter(keep_exc_info=keep_exc_info)
                logger.addFilter(log_filter)
                added.append((logger, log_filter))

    def uninstall() -> None:
        nonlocal active
        with _install_lock:
            active = False
            if logging.getLogRecordFactory() is factory:
                logging.setLogRecordFactory(previous)
            # Otherwise someone wrapped our factory since: it stays in their chain, inactive.
            for logger, log_filter in added:
                logger.removeFilter(log_filter)

    return uninstall
