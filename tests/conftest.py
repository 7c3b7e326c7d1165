"""Shared fixtures: settings that never reach a real host and never sleep for long."""

from __future__ import annotations

import pytest

from bot.config import Settings


def make_settings(**overrides: object) -> Settings:
    """Settings isolated from the developer's `.env` and environment, with near-zero retry delays."""
    base: dict[str, object] = {
        "discord_token": None,
        "listenhub_api_key": None,
        "nanobanana_pro_api_key": None,
        "apimart_api_key": None,
        "mountsea_api_key": None,
        "retry_backoff_base": 0.001,
        "retry_backoff_max": 0.01,
        "retry_after_cap": 0.05,
        "poll_interval": 0.01,
        "task_deadline": 5.0,
        "http_read_timeout": 5.0,
        "http_connect_timeout": 2.0,
        "download_timeout": 5.0,
        "allow_private_urls": True,
    }
    base.update(overrides)
    return Settings(_env_file=None, **base)  # type: ignore[arg-type]


@pytest.fixture
def settings_factory():
    return make_settings
