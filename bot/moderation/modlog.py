"""Mod-log entries: what moderators see for generations, blocked prompts, reports, bans and policy changes.

Plain data (no Discord objects, no words in a language): titles and values are messages
(:class:`bot.i18n.Text`) or plain text (mentions, prompts, numbers), field names message ids (``N_``).
:mod:`bot.presentation.moderation` turns an entry into an embed in the server's language and sends it,
best effort and off the job's critical path.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from bot.i18n import N_, Text, msg, nmsg
from bot.moderation.bans import ban_reason, describe_duration
from bot.storage.moderation import Ban

#: A field's value: a message, or text shown as it is.
Value = Text | str

EntryKind = Literal[
    "generation",
    "blocked",
    "slow_filter",
    "report",
    "policy",
    "ban",
    "unban",
    "purge",
    "delete",
    "provider_key",
]

COLOURS: dict[str, int] = {
    "generation": 0x5865F2,
    "blocked": 0xE67E22,
    "slow_filter": 0xF1C40F,
    "report": 0xD64545,
    "policy": 0x95A5A6,
    "ban": 0x992D22,
    "unban": 0x2ECC71,
    "purge": 0x992D22,
    "delete": 0x992D22,
    "provider_key": 0xD64545,
}
VALUE_MAX = 1000

#: Blocked-prompt entries shown per member and server within the window; the rest are counted and
#: summed up on the member's next entry that is shown.
BLOCKED_SHOWN_PER_USER = 3
BLOCKED_WINDOW_SECONDS = 600.0


@dataclass(frozen=True)
class ModLogEntry:
    guild_id: int
    kind: EntryKind
    title: Text
    #: (name, value): the name is a message id (English), the value a message or plain text.
    fields: tuple[tuple[str, Value], ...] = ()
    url: str | None = None
    image_url: str | None = None
    #: A report: the job whose result the moderator buttons act on.
    report_job_id: int | None = None
    #: Channels that get the entry besides the current mod log (the old one, when the mod log moves).
    also_to: tuple[int, ...] = ()
    extra: Mapping[str, object] = field(default_factory=dict)
    #: The language of the server when the entry was made (the job's or interaction's), if known.
    locale: str | None = None

    @property
    def colour(self) -> int:
        return COLOURS.get(self.kind, 0x95A5A6)


class EntryRate:
    """At most ``limit`` entries per key within a sliding ``window`` (seconds of the caller's clock).

    :meth:`admit` returns ``None`` for an entry to drop, else how many were dropped for that key since
    its last shown entry (for a summary line). Memory stays bounded: past ``max_keys`` keys, those whose
    window is over and that await no summary are forgotten, then the longest-unused ones (their counts
    are lost, never shown)."""

    def __init__(self, limit: int, window: float, *, max_keys: int = 10_000) -> None:
        self.limit = limit
        self.window = window
        self.max_keys = max_keys
        self._shown: OrderedDict[Hashable, deque[float]] = OrderedDict()
        self._dropped: dict[Hashable, int] = {}

    def admit(self, key: Hashable, now: float) -> int | None:
        shown = self._shown.pop(key, None) or deque()
        while shown and shown[0] <= now - self.window:
            shown.popleft()
        self._shown[key] = shown  # most recently used last
        if len(shown) >= self.limit:
            self._dropped[key] = self._dropped.get(key, 0) + 1
            return None
        shown.append(now)
        self._prune(now)
        return self._dropped.pop(key, 0)

    def _prune(self, now: float) -> None:
        if len(self._shown) <= self.max_keys:
            return
        for key in [k for k, times in self._shown.items() if not times or times[-1] <= now - self.window]:
            if key not in self._dropped:
                del self._shown[key]
        while len(self._shown) > self.max_keys:
            key, _ = self._shown.popitem(last=False)
            self._dropped.pop(key, None)


def clip(text: str, limit: int = VALUE_MAX) -> str:
    text = text.strip() or "—"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def quote(prompt: str) -> str:
    """A user's prompt, shown inertly (code block, no mentions or markdown)."""
    return "```\n" + clip(prompt.replace("`", "ʼ"), VALUE_MAX - 10) + "\n```"


def _jump(url: str) -> Text:
    return msg("[jump to the message]({url})", url=url)


def generation(
    guild_id: int, *, user_id: int, prompt: str, model: str, kind: str, job_id: int, url: str | None
) -> ModLogEntry:
    fields: list[tuple[str, Value]] = [
        (N_("User"), f"<@{user_id}> ({user_id})"),
        (N_("Model"), model),
        (N_("Kind"), kind),
        (N_("Prompt"), quote(prompt)),
    ]
    if url:
        fields.append((N_("Result"), _jump(url)))
    return ModLogEntry(
        guild_id, "generation", msg("🎨 Generation · job {job}", job=job_id), tuple(fields), url=url
    )


def key_rejected(
    guild_id: int,
    *,
    provider: str,
    out_of_credits: bool,
    user_id: int,
    job_id: int,
    locale: str | None = None,
) -> ModLogEntry:
    """The provider refused this server's own key (401/403) or its account is out of credits (402).
    ``locale``: the job's language (the server's when it was queued)."""
    if out_of_credits:
        title = msg("🔑 Provider key is out of credits · job {job}", job=job_id)
        happened = msg("The provider said this server's own key is out of credits.")
    else:
        title = msg("🔑 Provider key was refused · job {job}", job=job_id)
        happened = msg("The provider said this server's own key was refused.")
    fields: tuple[tuple[str, Value], ...] = (
        (N_("Provider"), provider),
        (N_("What happened"), happened),
        (N_("Requested by"), f"<@{user_id}> ({user_id})"),
        (
            N_("What to do"),
            msg("Check the key at the provider, then `/palette provider set` it again (or remove it)."),
        ),
    )
    return ModLogEntry(guild_id, "provider_key", title, fields, locale=locale)


def blocked(
    guild_id: int,
    *,
    user_id: int,
    channel_id: int | None,
    prompt: str,
    matched: Value,
    recent: int,
    auto_ban: Ban | None,
    not_shown: int = 0,
) -> ModLogEntry:
    """``not_shown``: the member's blocked prompts left out of the mod log since their last entry."""
    fields: list[tuple[str, Value]] = [
        (N_("User"), f"<@{user_id}> ({user_id})"),
        (N_("Channel"), f"<#{channel_id}>" if channel_id else "—"),
        (N_("Matched"), clip(matched, 200) if isinstance(matched, str) else matched),
        (N_("Recent blocked prompts"), str(recent)),
        (N_("Prompt"), quote(prompt)),
    ]
    if auto_ban is not None:
        if auto_ban.expires_at is None:
            banned = msg("banned until lifted")
        else:
            banned = msg(
                "banned for {duration} (until {until})",
                duration=describe_duration(auto_ban.expires_at - auto_ban.created_at),
                until=f"<t:{int(auto_ban.expires_at)}:f>",
            )
        fields.append((N_("Auto-ban"), banned))
    if not_shown:
        fields.append(
            (
                N_("Not shown"),
                nmsg(
                    "{n} more blocked prompt from {user} was not shown",
                    "{n} more blocked prompts from {user} were not shown",
                    not_shown,
                    user=f"<@{user_id}>",
                ),
            )
        )
    return ModLogEntry(guild_id, "blocked", msg("🚫 Blocked prompt"), tuple(fields))


def slow_filter(
    guild_id: int, *, user_id: int, channel_id: int | None, prompt: str, slow: Sequence[str]
) -> ModLogEntry:
    """The blocklist could not be checked in time, so a prompt was refused: name the slow entries."""
    names = "\n".join(f"`{clip(s.replace('`', 'ʼ'), 200)}`" for s in slow) or "—"
    fields: tuple[tuple[str, Value], ...] = (
        (N_("Slow entries"), clip(names)),
        (
            N_("What to do"),
            msg(
                "Simplify or remove these with `/palette blocklist remove`: until then, prompts that take "
                "them too long to check are refused."
            ),
        ),
        (N_("User"), f"<@{user_id}> ({user_id})"),
        (N_("Channel"), f"<#{channel_id}>" if channel_id else "—"),
        (N_("Prompt"), quote(prompt)),
    )
    return ModLogEntry(guild_id, "slow_filter", msg("⏱️ Blocklist too slow: a prompt was refused"), fields)


def report(
    guild_id: int, *, reporter_id: int, user_id: int, job_id: int, prompt: str, model: str, url: str | None
) -> ModLogEntry:
    fields: list[tuple[str, Value]] = [
        (N_("Reported by"), f"<@{reporter_id}>"),
        (N_("Author"), f"<@{user_id}> ({user_id})"),
        (N_("Model"), model),
        (N_("Prompt"), quote(prompt)),
    ]
    if url:
        fields.append((N_("Result"), _jump(url)))
    return ModLogEntry(
        guild_id,
        "report",
        msg("🚩 Reported result · job {job}", job=job_id),
        tuple(fields),
        url=url,
        report_job_id=job_id,
    )


def _clip_value(value: object) -> Value:
    return clip(value) if isinstance(value, str) else value  # type: ignore[return-value]


def policy_change(
    guild_id: int,
    *,
    actor_id: int,
    what: Value,
    before: object,
    after: object,
    also_to: tuple[int, ...] = (),
) -> ModLogEntry:
    return ModLogEntry(
        guild_id,
        "policy",
        msg("⚙️ Policy changed: {what}", what=what),
        (
            (N_("By"), f"<@{actor_id}>"),
            (N_("Before"), _clip_value(before)),
            (N_("After"), _clip_value(after)),
        ),
        also_to=also_to,
    )


def ban(guild_id: int, b: Ban, *, actor_id: int | None) -> ModLogEntry:
    by: Value = f"<@{actor_id}>" if actor_id else msg("Palette (automatic)")
    return ModLogEntry(
        guild_id,
        "ban",
        msg("⛔ Generation ban"),
        (
            (N_("User"), f"<@{b.user_id}> ({b.user_id})"),
            (N_("By"), by),
            (N_("Duration"), describe_duration_from(b)),
            (N_("Reason"), _reason(b)),
        ),
    )


def unban(guild_id: int, user_id: int, *, actor_id: int) -> ModLogEntry:
    return ModLogEntry(
        guild_id,
        "unban",
        msg("✅ Generation ban lifted"),
        ((N_("User"), f"<@{user_id}>"), (N_("By"), f"<@{actor_id}>")),
    )


def purge(guild_id: int, user_id: int, *, actor_id: int, deleted: int, failed: int) -> ModLogEntry:
    return ModLogEntry(
        guild_id,
        "purge",
        msg("🧹 Purged a user's results"),
        (
            (N_("User"), f"<@{user_id}> ({user_id})"),
            (N_("By"), f"<@{actor_id}>"),
            (N_("Messages deleted"), str(deleted)),
            (N_("Could not delete"), str(failed)),
        ),
    )


def deleted_result(guild_id: int, *, job_id: int, user_id: int, actor_id: int) -> ModLogEntry:
    return ModLogEntry(
        guild_id,
        "delete",
        msg("🗑️ Result deleted by a moderator · job {job}", job=job_id),
        ((N_("Author"), f"<@{user_id}>"), (N_("By"), f"<@{actor_id}>")),
    )


def _reason(b: Ban) -> Value:
    """Palette's own reasons in the log's language; a moderator's as typed (clipped)."""
    reason = ban_reason(b)
    return clip(reason or "—", 300) if reason is None or isinstance(reason, str) else reason


def describe_duration_from(b: Ban) -> Text:
    if b.expires_at is None:
        return msg("until lifted")
    return msg(
        "for {duration} (until {until})",
        duration=describe_duration(b.expires_at - b.created_at),
        until=f"<t:{int(b.expires_at)}:f>",
    )
