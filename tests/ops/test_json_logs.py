"""LOG_FORMAT=json: one JSON object per line with the context that applies, secrets and interaction tokens
redacted as in the text format."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from bot.logs import JsonFormatter, RedactSecrets, log_context

TOKEN = "aW50ZXJhY3Rpb246MTIzNDU2Nzg5OnNlY3JldA"


def json_logger(secrets: tuple[str, ...] = ()) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactSecrets(secrets))
    logger = logging.getLogger(f"palette.test.json.{id(stream)}")
    logger.handlers = [handler]
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    return logger, stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


async def test_each_line_is_an_object_with_the_task_context() -> None:
    logger, stream = json_logger()

    async def job() -> None:
        log_context(job_id=42, user_id=7, guild_id=9)
        logger.info("job %s started", 42)
        log_context(provider="listenhub")
        logger.warning("slow")

    await asyncio.create_task(job())
    logger.info("outside any job")
    first, second, third = lines(stream)
    assert first["message"] == "job 42 started" and first["level"] == "INFO"
    assert (first["job_id"], first["user_id"], first["guild_id"]) == (42, 7, 9) and "provider" not in first
    assert second["provider"] == "listenhub" and second["job_id"] == 42
    assert str(first["timestamp"]).endswith("Z") and first["logger"] == logger.name
    # The context stayed in the job's task.
    assert "job_id" not in third


def test_extra_fields_apply_and_tokens_are_redacted_in_json() -> None:
    logger, stream = json_logger(secrets=("bot-token-value",))
    logger.debug(
        "POST https://discord.com/api/v10/webhooks/123/%s/messages/@original with bot-token-value", TOKEN
    )
    logger.debug("POST /interactions/555/%s/callback", "plain-interaction-token", extra={"guild_id": 3})
    try:
        raise RuntimeError(f"failed for {TOKEN}")
    except RuntimeError:
        logger.exception("boom")
    text = stream.getvalue()
    assert TOKEN not in text and "bot-token-value" not in text and "plain-interaction-token" not in text
    webhook, callback, boom = lines(stream)
    assert "/webhooks/123/[redacted]/messages/@original" in str(webhook["message"])
    assert callback["message"] == "POST /interactions/555/[redacted]/callback" and callback["guild_id"] == 3
    assert "RuntimeError" in str(boom["exception"]) and "[redacted]" in str(boom["exception"])
