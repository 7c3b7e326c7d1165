"""Monthly usage of servers: images charged by model and resolution, by member, and the provider credits
they cost where the provider documents a price (ListenHub's credit tiers).

Computed from the jobs table (its ``committed`` counts are the ledger's charges) by
:class:`bot.storage.usage.SqlUsageRepository`; this module turns the rows into a report. Words are the
caller's (the Discord layer and the CLI).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from bot.errors import ValidationError
from bot.providers.listenhub import price_credits
from bot.storage.usage import MemberUsageRow, ModelUsageRow, SqlUsageRepository

_MONTH = re.compile(r"^\s*(\d{4})-(\d{1,2})\s*$")


@dataclass(frozen=True)
class Month:
    year: int
    month: int

    @property
    def label(self) -> str:
        return f"{self.year:04d}-{self.month:02d}"

    @property
    def start(self) -> float:
        return datetime(self.year, self.month, 1, tzinfo=UTC).timestamp()

    @property
    def end(self) -> float:
        days = calendar.monthrange(self.year, self.month)[1]
        return self.start + days * 86400.0


def parse_month(text: str | None, now: float) -> Month:
    """``YYYY-MM`` (UTC), or the current month when empty."""
    if text is None or not text.strip():
        today = datetime.fromtimestamp(now, UTC)
        return Month(today.year, today.month)
    match = _MONTH.match(text)
    if not match or not 1 <= int(match.group(2)) <= 12 or int(match.group(1)) < 2000:
        raise ValidationError("Give the month as YYYY-MM, e.g. 2026-11.")
    return Month(int(match.group(1)), int(match.group(2)))


def credits_of(row: ModelUsageRow) -> float | None:
    """Provider credits these images cost, where the provider documents a price per image."""
    if row.provider != "listenhub" or not row.provider_model:
        return None
    price = price_credits(row.provider_model, row.resolution or "")
    return None if price is None else price * row.images


@dataclass
class UsageReport:
    """One server's month (``guild_id`` None: direct messages)."""

    month: Month
    guild_id: int | None
    models: list[ModelUsageRow] = field(default_factory=list)
    members: list[MemberUsageRow] = field(default_factory=list)

    @property
    def images(self) -> int:
        return sum(r.images for r in self.models)

    def credits(self) -> dict[str, float]:
        """Documented credits spent per provider (only providers that publish prices)."""
        spent: dict[str, float] = {}
        for row in self.models:
            value = credits_of(row)
            if value is not None and row.provider:
                spent[row.provider] = spent.get(row.provider, 0.0) + value
        return spent

    def by_model(self) -> list[tuple[str, str, int]]:
        """(model, resolution, images), the providers summed up."""
        totals: dict[tuple[str, str], int] = {}
        for row in self.models:
            key = (row.model, row.resolution or "?")
            totals[key] = totals.get(key, 0) + row.images
        return [(m, r, n) for (m, r), n in sorted(totals.items())]


async def usage_reports(
    repo: SqlUsageRepository, month: Month, guild_id: int | None = None
) -> dict[int | None, UsageReport]:
    """The month's usage of one server (``guild_id``) or of every server (the operator's view)."""
    reports: dict[int | None, UsageReport] = {}
    if guild_id is not None:
        reports[guild_id] = UsageReport(month, guild_id)
    for row in await repo.by_model(month.start, month.end, guild_id):
        reports.setdefault(row.guild_id, UsageReport(month, row.guild_id)).models.append(row)
    for member in await repo.by_member(month.start, month.end, guild_id):
        reports.setdefault(member.guild_id, UsageReport(month, member.guild_id)).members.append(member)
    return reports
