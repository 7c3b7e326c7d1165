"""Settings, read from the environment and `.env` (pydantic-settings).

Every variable is documented in `.env.example`. Secrets are :class:`SecretStr`: they never show in a
repr, a log line or an error message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ProviderName = Literal["listenhub", "nanobanana_pro", "apimart", "mountsea"]
PROVIDER_NAMES: tuple[ProviderName, ...] = ("listenhub", "nanobanana_pro", "apimart", "mountsea")

DISCORD_GATEWAY_DEFAULT = "wss://gateway.discord.gg/"


def parse_shard_ids(value: str) -> list[int]:
    """``"0,1"``, ``"0-3"`` or a mix (``"0-2,5"``) as a sorted list without repeats."""
    ids: set[int] = set()
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        low, dash, high = part.partition("-")
        try:
            first, last = int(low), int(high if dash else low)
        except ValueError:
            raise ValueError(f"{part!r} is not a shard id or a range like 0-3") from None
        if first < 0 or last < first:
            raise ValueError(f"{part!r} is not a range of shard ids (low-high, from 0)")
        ids.update(range(first, last + 1))
    if not ids:
        raise ValueError("no shard ids given")
    return sorted(ids)


class ProviderSettings:
    """One provider's view of the settings (key, base URL, concurrency cap)."""

    def __init__(
        self, name: ProviderName, api_key: SecretStr | None, base_url: str, concurrency: int
    ) -> None:
        self.name = name
        self.api_key = api_key
        self.base_url = base_url.rstrip("/")
        self.concurrency = concurrency

    @property
    def enabled(self) -> bool:
        return self.api_key is not None and bool(self.api_key.get_secret_value().strip())

    def __repr__(self) -> str:
        return f"ProviderSettings({self.name!r}, enabled={self.enabled}, base_url={self.base_url!r})"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        # A rejected value never appears in the error (DATABASE_URL may carry a password, keys are keys).
        hide_input_in_errors=True,
    )

    # --- Discord ---
    discord_token: SecretStr | None = None
    discord_api_base: str = "https://discord.com/api/v10"
    discord_gateway_url: str = DISCORD_GATEWAY_DEFAULT
    discord_dev_guild_id: int | None = None
    # Open connections to Discord's REST API per process, reused (keep-alive). discord.py's default is no
    # limit: a burst of 1000 commands opened 1000 connections (each a TCP and TLS handshake) to defer
    # them; beyond this many, requests wait for a free connection instead.
    discord_http_connections: int = Field(64, ge=1, le=1000)

    # --- storage ---
    # sqlite:///relative.db, sqlite:////absolute.db, or postgresql://user:password@host:5432/dbname
    database_url: str = "sqlite:///data/palette.db"
    # Reference images stored with one job, in bytes (all of them together); beyond it the request is refused.
    max_job_reference_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # Working files (images waiting for upload). Empty: the SQLite database's directory, else ./data.
    data_dir: Path | None = None

    # --- providers (enabled when the key is set) ---
    listenhub_api_key: SecretStr | None = None
    listenhub_base_url: str = "https://api.marswave.ai/openapi"
    listenhub_concurrency: int = Field(4, ge=1, le=256)
    nanobanana_pro_api_key: SecretStr | None = None
    nanobanana_pro_base_url: str = "https://nano-banana-pro.net"
    # nano-banana-pro.net's Standard plan allows 5 concurrent generations.
    nanobanana_pro_concurrency: int = Field(5, ge=1, le=256)
    apimart_api_key: SecretStr | None = None
    apimart_base_url: str = "https://api.apimart.ai"
    apimart_concurrency: int = Field(8, ge=1, le=256)
    mountsea_api_key: SecretStr | None = None
    mountsea_base_url: str = "https://api.mountsea.ai"
    mountsea_concurrency: int = Field(8, ge=1, le=256)

    # Which provider to try first when a model has several routes (comma-separated provider keys).
    provider_order: str = "listenhub,nanobanana_pro,apimart,mountsea"

    # --- HTTP behaviour ---
    http_connect_timeout: float = Field(10.0, gt=0)
    # Synchronous generation calls can take a minute or more at 4K.
    http_read_timeout: float = Field(180.0, gt=0)
    http_max_retries: int = Field(3, ge=0, le=10)
    retry_backoff_base: float = Field(1.0, ge=0)
    retry_backoff_max: float = Field(30.0, ge=0)
    retry_after_cap: float = Field(60.0, ge=0)
    # Asynchronous providers: how often to poll and how long a task may take overall.
    poll_interval: float = Field(2.0, gt=0)
    task_deadline: float = Field(600.0, gt=0)
    # A job not finished within this many seconds of its request (e.g. across a long outage) is refunded.
    job_max_age: float = Field(3600.0, gt=0)
    # On SIGTERM/SIGINT: seconds running jobs get to finish before the rest is left for the next start.
    shutdown_grace: float = Field(20.0, ge=0)
    # --- the queue (several processes share one database) ---
    # A worker's claim on a job lasts this long unless renewed (every third of it); a worker that dies
    # stops renewing and, once it has run out, another worker takes the job over.
    job_lease_seconds: float = Field(30.0, gt=0)
    # Jobs one worker runs at once (talking to providers); 0 = the sum of the provider caps.
    worker_max_jobs: int = Field(0, ge=0)
    # Bytes of finished images a worker keeps in memory on their way to Discord; beyond it they wait on
    # disk (in the data directory) until they are uploaded.
    image_memory_budget: int = Field(256 * 1024 * 1024, ge=0)
    # Processes that re-encode results too large for an upload; 0 = one per CPU core.
    image_encoders: int = Field(0, ge=0)
    # Circuit breaker: after this many consecutive faults a provider is skipped for the cool-down.
    breaker_failures: int = Field(5, ge=1)
    breaker_cooldown: float = Field(60.0, ge=0)
    # Result downloads: DOWNLOAD_TIMEOUT bounds each step (connect, each read); DOWNLOAD_DEADLINE one whole
    # download, however slowly the server sends.
    download_timeout: float = Field(60.0, gt=0)
    download_deadline: float = Field(300.0, gt=0)
    download_max_bytes: int = Field(64 * 1024 * 1024, gt=0)
    # Image URLs taken from Discord messages ("Edit with Palette"): the whole download, redirects included.
    reference_download_deadline: float = Field(30.0, gt=0)
    allow_private_urls: bool = False

    # --- input caps ---
    max_prompt_length: int = Field(4000, ge=1)
    max_reference_bytes: int = Field(25 * 1024 * 1024, gt=0)
    max_reference_pixels: int = Field(40_000_000, gt=0)

    # --- per-user limits (images per day / per hour, jobs in flight); 0 means unlimited ---
    user_daily_limit: int = Field(25, ge=0)
    user_hourly_limit: int = Field(10, ge=0)
    user_max_concurrent: int = Field(2, ge=0)

    # --- servers' own provider keys (/palette provider) ---
    # A Fernet key (32 url-safe base64 bytes) that encrypts the provider keys servers bring; without it
    # the feature is off. Generate one with
    # `python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`.
    # Every gateway and worker needs the same one; losing it makes the stored keys unreadable.
    palette_secret_key: SecretStr | None = Field(
        None, description="Fernet key encrypting servers' own provider keys (empty: feature off)"
    )

    # --- moderation ---
    # Whether /imagine and friends may be used in DMs with the bot (servers set their own policy).
    allow_dms: bool = True

    # --- web gallery and moderation dashboard (`python -m bot web`; README "The web gallery") ---
    # The site's public address; the OAuth2 redirect is WEB_BASE_URL + /auth/callback. Empty: no site.
    web_base_url: str | None = None
    # What the web server listens on.
    web_host: str = "127.0.0.1"
    web_port: int = Field(8080, ge=0, le=65535)
    # The Discord application's id (OAuth2 client id); empty: read from Discord with the bot token.
    discord_client_id: int | None = None
    # The application's OAuth2 client secret (Developer Portal -> OAuth2).
    discord_client_secret: SecretStr | None = None
    # Where browsers are sent to log in; token exchange and user look-ups go to DISCORD_API_BASE.
    discord_oauth_url: str = "https://discord.com/oauth2/authorize"
    # Hours a web login lasts.
    web_session_hours: float = Field(24.0 * 7, gt=0)
    # Seconds between refreshes of a signed-in user's servers and permissions (GET /users/@me/guilds).
    web_guilds_refresh: float = Field(300.0, gt=0)
    # Where delivered images are kept for the gallery. Empty: <data dir>/images.
    image_store_dir: Path | None = None
    # Originals older than this many days are pruned (thumbnails stay); 0 = kept forever.
    image_retention_days: float = Field(0.0, ge=0)

    log_level: str = "INFO"
    # "text" (readable lines, the default) or "json" (one JSON object per line, for log collectors).
    log_format: Literal["text", "json"] = "text"

    # --- operations (bot/ops) ---
    # When set, the process serves /metrics (Prometheus), /healthz and /readyz on METRICS_HOST:METRICS_PORT
    # (0 = any free port, logged at start). Each process of a host needs its own port.
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # Gateway shards: SHARD_COUNT is the total (unset: the count Discord recommends), SHARD_IDS the ones
    # this process runs ("0,1", "0-3", unset: all). With either set the gateway runs sharded.
    shard_count: int | None = Field(None, ge=1)
    shard_ids: str | None = None

    @field_validator(
        "discord_token",
        "listenhub_api_key",
        "nanobanana_pro_api_key",
        "apimart_api_key",
        "mountsea_api_key",
        "palette_secret_key",
        "discord_client_secret",
        "web_base_url",
        mode="before",
    )
    @classmethod
    def _blank_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        from bot.storage.engine import parse_database_url

        parse_database_url(value)  # DatabaseUrlError (a ValueError) never quotes the URL
        return value.strip()

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        parse_shard_ids(value)  # ValueError with the reason
        return value.strip()

    @field_validator(
        "discord_dev_guild_id",
        "data_dir",
        "metrics_port",
        "shard_count",
        "discord_client_id",
        "image_store_dir",
        mode="before",
    )
    @classmethod
    def _blank_guild_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    # --- derived views ---

    @property
    def sharded(self) -> bool:
        """Whether the gateway runs discord.py's AutoShardedClient (SHARD_COUNT or SHARD_IDS is set)."""
        return self.shard_count is not None or self.shard_ids is not None

    def shard_id_list(self) -> list[int] | None:
        """SHARD_IDS as a sorted list (None: every shard)."""
        return parse_shard_ids(self.shard_ids) if self.shard_ids else None

    def provider(self, name: ProviderName) -> ProviderSettings:
        return ProviderSettings(
            name,
            getattr(self, f"{name}_api_key"),
            getattr(self, f"{name}_base_url"),
            getattr(self, f"{name}_concurrency"),
        )

    def providers(self) -> list[ProviderSettings]:
        return [self.provider(name) for name in PROVIDER_NAMES]

    def enabled_providers(self) -> set[str]:
        return {p.name for p in self.providers() if p.enabled}

    def provider_rank(self) -> dict[str, int]:
        """Position of each provider in PROVIDER_ORDER; unlisted providers go last, in catalog order."""
        order = [p.strip() for p in self.provider_order.split(",") if p.strip()]
        return {name: i for i, name in enumerate(order)}

    @property
    def database_is_sqlite(self) -> bool:
        from bot.storage.engine import is_sqlite

        return is_sqlite(self.database_url)

    @property
    def database_path(self) -> Path:
        """The SQLite file from DATABASE_URL (`sqlite:///relative.db` or `sqlite:////absolute.db`);
        ValueError for PostgreSQL (and for ``:memory:``)."""
        from bot.storage.engine import sqlite_path

        path = sqlite_path(self.database_url)
        if path is None:
            raise ValueError("DATABASE_URL is not a SQLite file (this needs sqlite:///path/to/palette.db)")
        return path

    @property
    def database_url_safe(self) -> str:
        """DATABASE_URL as it may be shown: the password masked."""
        from bot.storage.engine import parse_database_url, safe_url

        url = parse_database_url(self.database_url)
        return safe_url(url.set(drivername=url.get_backend_name()))

    @property
    def data_directory(self) -> Path:
        """Where working files go: DATA_DIR, else beside a SQLite database, else ``./data``."""
        if self.data_dir is not None:
            return self.data_dir
        from bot.storage.engine import sqlite_path

        path = sqlite_path(self.database_url)
        return path.parent if path is not None else Path("data")

    @property
    def image_store_directory(self) -> Path:
        """IMAGE_STORE_DIR, else ``<data dir>/images``."""
        return self.image_store_dir if self.image_store_dir is not None else self.data_directory / "images"

    @property
    def web_enabled(self) -> bool:
        """Whether the site is configured (WEB_BASE_URL and DISCORD_CLIENT_SECRET)."""
        secret = self.discord_client_secret
        return bool(self.web_base_url) and secret is not None and bool(secret.get_secret_value())

    def secrets(self) -> list[str]:
        """Every configured secret value; used to scrub logs."""
        values = [self.discord_token, self.palette_secret_key, self.discord_client_secret] + [
            p.api_key for p in self.providers()
        ]
        found = [v.get_secret_value() for v in values if v is not None and v.get_secret_value()]
        from bot.storage.engine import parse_database_url

        password = parse_database_url(self.database_url).password
        if password:
            found.append(str(password))
        return found
