"""Text from outside made safe for XML 1.0 and for one-line ``key=value`` logs (pure).

Candidates come from Kafka and acknowledgements and subscriptions from HTTP clients, so
any of their strings may hold characters that XML 1.0 forbids (C0 controls but tab,
newline and carriage return; lone surrogates; U+FFFE and U+FFFF), which would make the
next CAP document malformed, or a newline that would forge a log line.

- :func:`xml_safe`: every character XML 1.0 forbids becomes U+FFFD (the replacement
  character), so the reader sees that something was there; everything else is kept.
- :func:`log_value` and :class:`EscapingFilter`: a log argument is one token: control
  characters, line and paragraph separators are escaped (``\\n``, ``\\x1b``), and a value
  with a space, ``=`` or ``"`` is quoted, so ``by="x\\nlevel=ERROR"`` stays one field of one
  line. Every module of :mod:`alerts` gets its logger through :func:`get_logger`, which
  installs the filter on it.
"""

from __future__ import annotations

import logging
import re

__all__ = ["REPLACEMENT", "EscapingFilter", "get_logger", "log_value", "xml_safe"]

REPLACEMENT = "\ufffd"

#: What XML 1.0 (fifth edition, production [2] Char) does not allow.
_XML_FORBIDDEN = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")

#: What must not reach a log line raw: C0 and C1 controls, DEL, line and paragraph
#: separators (some viewers break lines there), lone surrogates.
_LOG_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_NEEDS_QUOTES = re.compile(r'[\s="]')
_MAX_LOG_VALUE = 500


def xml_safe(text: str) -> str:
    """``text`` with every character XML 1.0 forbids replaced by U+FFFD."""
    return _XML_FORBIDDEN.sub(REPLACEMENT, text)


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def log_value(value: object) -> str:
    """``value`` as one log token: escaped, quoted when it holds a space, ``=`` or ``"``,
    and cut at 500 characters (a log line is not where a long text is read)."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > _MAX_LOG_VALUE:
        text = text[:_MAX_LOG_VALUE] + "..."
    text = text.replace("\\", "\\\\")
    text = _LOG_UNSAFE.sub(_escape_char, text)
    if _NEEDS_QUOTES.search(text) or not text:
        text = '"' + text.replace('"', '\\"') + '"'
    return text


class EscapingFilter(logging.Filter):
    """Turns every argument of a record that is not a number into :func:`log_value`."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and args:
            record.args = tuple(
                a if isinstance(a, int | float) or a is None else log_value(a) for a in args
            )
        return True


_FILTER = EscapingFilter()


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with :class:`EscapingFilter` installed (once)."""
    logger = logging.getLogger(name)
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
    return logger
