"""Command localizations: discord.py's :class:`~discord.app_commands.Translator` over Palette's catalogs.

Every description (commands, subcommands, options), choice name and the context menu's name is a
``locale_str`` whose message is its English text; Discord gets ``*_localizations`` for every shipped
locale. Command, group and option names stay English (help pages, habits and links work everywhere).
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.app_commands import TranslationContextLocation as Where

from bot.i18n import translate_or_none

#: What is translated (names of commands and options are not).
TRANSLATED = frozenset(
    {
        Where.command_description,
        Where.group_description,
        Where.parameter_description,
        Where.choice_name,
        Where.other,
    }
)
#: Discord's limits (characters) per kind of text.
LIMITS = {Where.choice_name: 100, Where.command_name: 32}
DESCRIPTION_MAX = 100
CONTEXT_MENU_NAME_MAX = 32


class PaletteTranslator(app_commands.Translator):
    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContext,
    ) -> str | None:
        where = context.location
        menu = where is Where.command_name and isinstance(context.data, app_commands.ContextMenu)
        if where not in TRANSLATED and not menu:
            return None
        translated = translate_or_none(locale, string.message)
        if translated is None:
            return None
        limit = CONTEXT_MENU_NAME_MAX if menu else LIMITS.get(where, DESCRIPTION_MAX)
        # Too long for Discord (a catalog mistake): the English text is shown rather than a failed sync.
        return translated if len(translated) <= limit else None
