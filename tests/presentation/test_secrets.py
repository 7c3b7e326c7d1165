"""No API key or Discord token in any log line or message of a full run, including provider failures
whose bodies echo our credentials back."""

from __future__ import annotations

import logging

import pytest

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
