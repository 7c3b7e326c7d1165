from __future__ import annotations

import logging

from bot.logs import REDACTED, RedactSecrets


def test_secrets_are_redacted_from_messages_args_and_tracebacks(caplog) -> None:
    logger = logging.getLogger("palette.test.redact")
    handler_records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            handler_records.append(self.format(record))

    handler = Collect()
    handler.addFilter(RedactSecrets(["sk-very-secret-key", "discord.token.value"]))
    logger.addHandler(handler)
    try:
        logger.error("calling with %s", "Bearer sk-very-secret-key")
        try:
            raise RuntimeError("token discord.token.value leaked")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(handler_records)
    assert "sk-very-secret-key" not in text
    assert "discord.token.value" not in text
    assert text.count(REDACTED) >= 2
    assert "RuntimeError" in text


# --- interaction and webhook tokens (issue 13): not known in advance, recognised by where they appear ---

TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5MDEyMzQ1Njc4OTpBYkNkRWZHaElqS2xNbk9wUXJTdFV2V3hZeg"
OTHER = "S0me-Webhook_T0ken.value"  # a webhook token of no particular shape


def _emitted(*records: tuple[str, tuple[object, ...]], exc: BaseException | None = None) -> str:
    """Log ``records`` (format, args) at DEBUG through a handler with the filter (no secrets configured)."""
    logger = logging.getLogger("discord.webhook.async_.test")
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect()
    handler.addFilter(RedactSecrets([]))
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    try:
        for fmt, args in records:
            logger.debug(fmt, *args)
        if exc is not None:
            try:
                raise exc
            except type(exc):
                logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return "\n".join(lines)


def test_webhook_and_callback_urls_lose_their_token_but_keep_the_rest() -> None:
    base = "https://discord.com/api/v10"
    text = _emitted(
        ("%s %s with %s has returned %s", ("POST", f"{base}/interactions/111/{TOKEN}/callback", None, 204)),
        ("Webhook ID %s with %s %s", (222, "PATCH", f"{base}/webhooks/222/{TOKEN}/messages/@original")),
        ("Webhook ID %s with %s %s", (333, "POST", f"{base}/webhooks/333/{OTHER}?wait=true")),
    )
    assert TOKEN not in text and OTHER not in text
    assert f"{base}/interactions/111/{REDACTED}/callback" in text
    assert f"{base}/webhooks/222/{REDACTED}/messages/@original" in text
    assert f"{base}/webhooks/333/{REDACTED}?wait=true" in text


def test_token_fields_of_payloads_are_redacted() -> None:
    event = {"op": 0, "t": "INTERACTION_CREATE", "d": {"id": "1", "token": TOKEN, "type": 2}}
    text = _emitted(
        ("For Shard ID %s: WebSocket Event: %s", (None, event)),
        ('{"interaction_token": "%s", "x": 1}', (OTHER,)),
    )
    assert TOKEN not in text and OTHER not in text
    assert f"'token': '{REDACTED}'" in text and f'"interaction_token": "{REDACTED}"' in text
    assert "'type': 2" in text


def test_an_interaction_token_is_redacted_wherever_it_appears() -> None:
    # e.g. aiosqlite's DEBUG line for an INSERT, parameters included.
    text = _emitted(("executing %r", (("INSERT INTO jobs VALUES (?, ?)", (7, TOKEN)),)))
    assert TOKEN not in text and f"(7, '{REDACTED}')" in text


def test_tokens_in_tracebacks_are_redacted() -> None:
    url = f"https://discord.com/api/v10/webhooks/444/{TOKEN}/messages/@original"
    text = _emitted(exc=RuntimeError(f"404 Not Found (error code: 10015): {url}"))
    assert TOKEN not in text and "RuntimeError" in text and f"webhooks/444/{REDACTED}" in text


def test_text_without_tokens_is_untouched() -> None:
    line = "GET /webhooks/ and /interactions/abc/callback, token count 3, {'token_ttl': 900}"
    assert _emitted((line.replace("%", "%%"), ())) == line


def test_redact_removes_configured_secrets_and_interaction_tokens() -> None:
    from bot.logs import redact

    text = redact(
        f"key sk-very-secret-key, hook /webhooks/5/{OTHER}/messages/1, {TOKEN}", ["sk-very-secret-key"]
    )
    assert "sk-very-secret-key" not in text and OTHER not in text and TOKEN not in text
