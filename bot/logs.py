"""Logging set-up with a redaction filter: no secret ever reaches a log line.

Configured secrets (the Discord token, API keys) are known in advance and replaced wherever they appear.
Interaction and webhook tokens are new with every interaction, so they are recognised by where they
appear instead: in webhook and interaction-callback URLs (discord.py logs those at DEBUG), in a payload's
``token`` field (the gateway's INTERACTION_CREATE), and by the prefix every interaction token has.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

REDACTED = "[redacted]"

#: (a literal every match contains, pattern, replacement): the literal is checked first, so a log line
#: without one costs a substring search, not a regular-expression scan.
_TOKEN_PATTERNS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    # /webhooks/<webhook or application id>/<token>[/messages/...]: followups and @original edits.
    ("/webhooks/", re.compile(r"(/webhooks/\d+/)[^/?#\s'\"<>]+"), rf"\g<1>{REDACTED}"),
    # /interactions/<interaction id>/<token>/callback: the first answer to an interaction.
    ("/interactions/", re.compile(r"(/interactions/\d+/)[^/?#\s'\"<>]+"), rf"\g<1>{REDACTED}"),
    # A "token" (or "interaction_token"...) field of a payload, as JSON or as a Python dict's repr.
    ("token", re.compile(r"""(["']\w*token["']\s*:\s*["'])[^"']+"""), rf"\g<1>{REDACTED}"),
    # Discord interaction tokens start with base64("interaction:"): caught anywhere, e.g. SQL parameters.
    ("aW50ZXJhY3Rpb246", re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_\-+=]*"), REDACTED),
)


def redact_tokens(text: str) -> str:
    """``text`` without interaction or webhook tokens (see the module docstring for how they are found)."""
    for needle, pattern, replacement in _TOKEN_PATTERNS:
        if needle in text:
            text = pattern.sub(replacement, text)
    return text


def redact(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every secret replaced (longest first, so one containing another goes whole), and
    without interaction or webhook tokens."""
    for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return redact_tokens(text)


class RedactSecrets(logging.Filter):
    """Replaces every configured secret, and every interaction or webhook token, in a record's final text
    (message, args and traceback)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Longest first so a secret that contains another is redacted whole.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _scrub(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return redact_tokens(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed logging call: left for the handler to report as usual
            return True
        record.msg = self._scrub(message)
        record.args = None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = self._scrub(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self._scrub(record.stack_info)
        return True


#: The fields a JSON log line carries when they apply (from :func:`log_context` or a call's ``extra``).
CONTEXT_FIELDS = ("job_id", "user_id", "guild_id", "provider")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "palette_log_context", default=None
)


def log_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Attach ``fields`` (of :data:`CONTEXT_FIELDS`) to every log line of the current task from now on
    (an asyncio task starts with a copy of its creator's context, so this stays within the task and the
    tasks it starts). ``None`` values are left out. Returns the token to undo it with
    :func:`reset_log_context`."""
    merged = dict(_context.get() or {})
    merged.update({k: v for k, v in fields.items() if k in CONTEXT_FIELDS and v is not None})
    return _context.set(merged)


def reset_log_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _context.reset(token)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``timestamp`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
    context fields that apply and ``exception`` (the traceback) when there is one. Runs after
    :class:`RedactSecrets`, so the message and traceback it sees are already scrubbed."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        entry: dict[str, Any] = {
            "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = dict(_context.get() or {})
        for name in CONTEXT_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                fields[name] = value
        for name in CONTEXT_FIELDS:
            if name in fields:
                value = fields[name]
                entry[name] = value if isinstance(value, (int, str)) else str(value)
        if record.exc_info and record.exc_info[1] is not None:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def setup_logging(level: str = "INFO", secrets: Iterable[str] = (), log_format: str = "text") -> None:
    """Log to stderr, as readable text or (``log_format="json"``) one JSON object per line; the
    redaction filter sits on the handler so it sees every logger's records, in either format."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO; keep it at WARNING so logs stay about the bot.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("discord.gateway").setLevel(logging.WARNING)
    # aiosqlite's debug lines print SQL parameters (interaction tokens among them).
    logging.getLogger("aiosqlite").setLevel(logging.INFO)
