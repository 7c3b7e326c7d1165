"""No API key or Discord token in any log line or message of a full run, including provider failures
whose bodies echo our credentials back."""

from __future__ import annotations

import io
import logging
import sys

import pytest

from bot.logs import REDACTED, setup_logging
from tests.fakes.http import png_bytes
from tests.fakes.providers.mountsea import Fault
from tests.presentation.conftest import Palette


async def test_no_secret_in_logs_or_messages_of_a_run_with_failures(
    palette: Palette, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    key = palette.listenhub.api_key
    palette.listenhub.script(400, {"error": f"bad request for Bearer {key}"})
    rejected = await palette.imagine(palette.alice, "rejected")
    await rejected.wait_for(lambda i: bool(i.original and "❌" in (i.original.content or "")), timeout=10)
    assert "[redacted]" in rejected.original.content

    palette.listenhub.script(500, {"error": f"upstream rejected {key}"}, times=None)
    await palette.result_message(await palette.imagine(palette.alice, "fails over to mountsea"))

    palette.mountsea.submit_faults.append(Fault(401, {"message": f"invalid key {palette.mountsea.key}"}))
    failed = await palette.imagine(palette.bob, "both providers refuse")
    await failed.wait_for(lambda i: bool(i.original and "❌" in (i.original.content or "")), timeout=10)
    await palette.idle()

    logged = caplog.text + "\n".join(str(r.__dict__) for r in caplog.records)
    shown = " ".join(m.content or "" for m in palette.fake.messages.values())
    stored = [job.error or "" for job in [await palette.bot.db.jobs.get_job(i) for i in (1, 2, 3)] if job]
    for secret in (key, palette.mountsea.key, palette.fake.bot_token):
        assert secret not in logged
        assert secret not in shown
        assert not any(secret in text for text in stored)


#: Loggers whose DEBUG lines carry interaction tokens (URLs, gateway payloads, SQL parameters), and the
#: HTTP clients'. setup_logging quiets some of them; here all speak, so the redaction itself is tested.
DEBUG_LOGGERS = ("discord", "discord.gateway", "discord.http", "discord.webhook", "aiosqlite", "httpx",
                 "httpcore", "aiohttp")  # fmt: skip


async def test_no_interaction_token_in_debug_logs(palette: Palette, monkeypatch: pytest.MonkeyPatch) -> None:
    """A DEBUG run through the bot's own log set-up: every interaction's token is redacted from what is
    written, in every logger (discord.py's webhook URLs, gateway events, aiosqlite's parameters)."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: logging.getLogger(name).level for name in DEBUG_LOGGERS}
    written = io.StringIO()
    monkeypatch.setattr(sys, "stderr", written)
    setup_logging("DEBUG", palette.bot.settings.secrets())
    for name in DEBUG_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        imagine = await palette.imagine(palette.alice, "a red kite")
        await palette.result_message(imagine)
        photo = palette.fake.add_attachment(png_bytes(30, 20), "photo.png", "image/png")
        target = palette.fake.post_user_message(palette.bob, palette.channel, "edit me", attachments=[photo])
        menu = await palette.fake.invoke_message_command(
            palette.alice, palette.channel, "Edit with Palette", target
        )
        modal = await palette.fill_modal(menu, palette.alice, ["make it night"])
        await palette.result_message(modal)
        await palette.idle()
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved_handlers:
            root.addHandler(handler)
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
    text = written.getvalue()
    for ix in (imagine, menu, modal):
        assert ix.token not in text
        # The lines that carried it were written, with the token replaced.
        assert f"/interactions/{ix.id}/{REDACTED}/callback" in text
    assert f"/webhooks/{palette.bot.application_id}/{REDACTED}/messages/" in text
    assert "INTERACTION_CREATE" in text and f"'token': '{REDACTED}'" in text
    assert palette.fake.bot_token not in text
