"""Autocomplete choices shared by several commands."""

from __future__ import annotations

from collections.abc import Iterable

from discord import app_commands

from bot.catalog import ModelSpec
from bot.i18n import t


def model_choices(models: Iterable[ModelSpec], locale: str, current: str) -> list[app_commands.Choice[str]]:
    """The offered models whose key or label contains what was typed, described in the typist's language."""
    current = current.lower()
    return [
        app_commands.Choice(name=f"{m.label}: {t(locale, m.description)}"[:100], value=m.key)
        for m in models
        if current in m.key or current in m.label.lower()
    ][:25]
