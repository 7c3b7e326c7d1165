"""Monthly usage from the jobs (the ledger's charges), on SQLite and PostgreSQL, and `python -m bot usage`."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.errors import ValidationError
from bot.storage import Limits, open_database
from bot.usage import Month, parse_month, usage_reports
from tests.storage.factories import new_job

NOV = datetime(2026, 11, 10, 12, tzinfo=UTC).timestamp()
DEC = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC).timestamp()


async def seed(url: str) -> None:
    db = await open_database(url)
    try:

        async def job(delivered: int, *, count: int, at: float, provider: str, provider_model: str,
                      **kw: Any) -> None:  # fmt: skip
            resolution = kw.pop("resolution", "1K")
            params = {"aspect_ratio": "1:1", "resolution": resolution, "count": count}
            record = await db.jobs.reserve_job(new_job(count=count, params=params, **kw), Limits(), at)
            status = "done" if delivered else "failed"
            await db.jobs.finish_job(
                record.id,
                delivered,
                status=status,
                provider=provider,
                provider_model=provider_model,
                now=at + 5,
            )

        # Server 100 in November: alice (1) 2 + 1 images of GPT-Image-2 at 1K and 4K on ListenHub, bob (2)
        # 1 image of Nano Banana Pro on Mountsea; a failed job and a partial one (3 asked, 2 delivered).
        await job(2, count=2, at=NOV, provider="listenhub", provider_model="gpt-image-2", model="gpt-image-2")
        await job(1, count=1, at=NOV + 60, provider="listenhub", provider_model="gpt-image-2",
                  model="gpt-image-2", resolution="4K")  # fmt: skip
        await job(1, count=1, at=NOV + 120, provider="mountsea", provider_model="nano-banana-pro",
                  model="nano-banana-pro", user_id=2)  # fmt: skip
        await job(
            0, count=1, at=NOV + 180, provider="listenhub", provider_model="gpt-image-2", model="gpt-image-2"
        )
        await job(2, count=3, at=NOV + 240, provider="mountsea", provider_model="nano-banana-pro",
                  model="nano-banana-pro", user_id=2)  # fmt: skip
        # Another server in November, and server 100 in December.
        await job(1, count=1, at=NOV, provider="mountsea", provider_model="nano-banana-pro",
                  model="nano-banana-pro", guild_id=300, user_id=9)  # fmt: skip
        await job(1, count=1, at=DEC, provider="listenhub", provider_model="gpt-image-2", model="gpt-image-2")
    finally:
        await db.close()


async def test_usage_by_model_member_and_credits(database_url: str) -> None:
    await seed(database_url)
    db = await open_database(database_url)
    try:
        nov = Month(2026, 11)
        mine = (await usage_reports(db.usage, nov, 100))[100]
        assert mine.images == 6
        assert mine.by_model() == [
            ("gpt-image-2", "1K", 2),
            ("gpt-image-2", "4K", 1),
            ("nano-banana-pro", "1K", 3),
        ]
        assert [(m.user_id, m.images) for m in mine.members] == [(1, 3), (2, 3)]  # ties: by member id
        # ListenHub's documented GPT-Image-2 tiers: 1K = 4 credits, 4K = 10.
        assert mine.credits() == {"listenhub": 2 * 4 + 10}
        every = await usage_reports(db.usage, nov)
        assert {g: r.images for g, r in every.items()} == {100: 6, 300: 1}
        december = (await usage_reports(db.usage, Month(2026, 12), 100))[100]
        assert december.images == 1 and december.credits() == {"listenhub": 4}
        empty = (await usage_reports(db.usage, Month(2026, 10), 100))[100]
        assert empty.images == 0 and empty.members == []
    finally:
        await db.close()


def test_month_parsing() -> None:
    assert parse_month("2026-11", 0).label == "2026-11"
    assert parse_month(None, DEC).label == "2026-12"
    assert Month(2026, 12).end == datetime(2027, 1, 1, tzinfo=UTC).timestamp()
    for bad in ("2026-13", "nov", "2026/11", "1999-01"):
        with pytest.raises(ValidationError):
            parse_month(bad, 0)


async def test_cli_usage_prints_every_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    url = f"sqlite:///{tmp_path / 'palette.db'}"
    await seed(url)
    monkeypatch.setenv("DATABASE_URL", url)
    assert await asyncio.to_thread(main, ["usage", "--month", "2026-11"]) == 0
    out = capsys.readouterr().out
    assert "usage 2026-11: 7 images in 2 server(s)" in out
    assert "server 100: 6 images" in out and "server 300: 1 images" in out
    assert "  model gpt-image-2 4K: 1" in out and "  member 9: 1" in out
    assert "  credits listenhub: 18" in out
    assert await asyncio.to_thread(main, ["usage", "--month", "november"]) == 2


async def test_doctor_says_whether_servers_can_bring_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from cryptography.fernet import Fernet

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'palette.db'}")
    for value, expected in (
        ("", "server keys: off"),
        ("not-a-fernet-key", "server keys: PROBLEM"),
        (Fernet.generate_key().decode(), "server keys: on"),
    ):
        monkeypatch.setenv("PALETTE_SECRET_KEY", value)
        await asyncio.to_thread(main, ["doctor"])
        out = capsys.readouterr().out
        assert expected in out
        assert not value or value not in out
