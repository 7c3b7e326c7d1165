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
