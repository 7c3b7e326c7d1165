"""Which language a message is written in.

Ephemeral replies (errors included) are for one person: the interaction's ``locale`` (the language of
their Discord client). Public posts (the status message, the result embed and its buttons, the mod log)
are for the server: the language set with ``/palette settings locale`` wins, else Discord's
``guild_locale`` (the server's "preferred locale" for community servers), else English.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord

from bot.i18n import SOURCE_LOCALE, resolve

if TYPE_CHECKING:
    from bot.storage import GuildPolicy


def user_locale(interaction: discord.Interaction) -> str:
    """The shipped locale for an ephemeral reply to this interaction's user."""
    return resolve(getattr(interaction, "locale", None))


def server_locale(interaction: discord.Interaction, policy: GuildPolicy | None) -> str:
    """The shipped locale for a public post about this interaction (in DMs: the user's)."""
    if interaction.guild_id is None:
        return user_locale(interaction)
    if policy is not None and policy.locale:
        return resolve(policy.locale)
    return resolve(getattr(interaction, "guild_locale", None) or SOURCE_LOCALE)


def guild_locale(guild: discord.Guild | None, policy: GuildPolicy | None, fallback: str | None = None) -> str:
    """A server's language without an interaction (the mod log): its setting, the one recorded with
    the entry (``fallback``), else the server's preferred locale as the gateway reported it."""
    if policy is not None and policy.locale:
        return resolve(policy.locale)
    if fallback:
        return resolve(fallback)
    if guild is not None:
        return resolve(guild.preferred_locale)
    return SOURCE_LOCALE
