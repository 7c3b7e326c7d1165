"""Provider adapters: one module per API, all on the shared :mod:`bot.providers.transport`."""

from __future__ import annotations

from bot.config import Settings
from bot.providers.apimart import ApiMartProvider
from bot.providers.base import ImageProvider, TaskProvider
from bot.providers.listenhub import ListenHubProvider
from bot.providers.mountsea import MountseaProvider
from bot.providers.nanobanana_pro import NanoBananaProProvider
from bot.providers.transport import Downloader, RetryPolicy, Transport

PROVIDER_CLASSES: dict[str, type[ImageProvider]] = {
    "listenhub": ListenHubProvider,
    "nanobanana_pro": NanoBananaProProvider,
    "apimart": ApiMartProvider,
    "mountsea": MountseaProvider,
}


def build_providers(
    settings: Settings, downloader: Downloader | None = None, *, spare: bool = False
) -> dict[str, ImageProvider]:
    """One adapter (with one pooled HTTP client) per enabled provider.

    ``spare``: instead, one for each provider the operator has *no* key for (no ``Authorization`` of its
    own): those serve only calls made with a server's own key (:mod:`bot.tenants`)."""
    downloader = downloader or build_downloader(settings)
    retry = RetryPolicy(
        max_retries=settings.http_max_retries,
        backoff_base=settings.retry_backoff_base,
        backoff_max=settings.retry_backoff_max,
        retry_after_cap=settings.retry_after_cap,
    )
    providers: dict[str, ImageProvider] = {}
    for ps in settings.providers():
        if ps.enabled == spare:
            continue
        cls = PROVIDER_CLASSES[ps.name]
        transport = Transport(
            ps.name,
            ps.base_url,
            None if spare else ps.api_key,
            downloader=downloader,
            retry=retry,
            connect_timeout=settings.http_connect_timeout,
            read_timeout=settings.http_read_timeout,
            # Spare clients carry only servers' own keys: a small pool each.
            max_connections=8 if spare else max(ps.concurrency * 2, 16),
            error_hook=cls.error_hook,
        )
        if issubclass(cls, TaskProvider):
            providers[ps.name] = cls(
                transport, poll_interval=settings.poll_interval, deadline=settings.task_deadline
            )
        else:
            providers[ps.name] = cls(transport)
    return providers


#: Connections for image URLs from Discord messages: few, so users' hosts can hold only these.
REFERENCE_CONNECTIONS = 8


def build_downloader(settings: Settings) -> Downloader:
    """The downloader for provider results (shared by every provider's transport)."""
    return Downloader(
        max_bytes=settings.download_max_bytes,
        timeout=settings.download_timeout,
        deadline=settings.download_deadline,
        allow_private=settings.allow_private_urls,
    )


def build_reference_downloader(settings: Settings) -> Downloader:
    """The downloader for image URLs a Discord user chose (embeds of a message): its own small pool, so a
    slow or hostile host never delays provider results, the reference size cap, and a short deadline."""
    return Downloader(
        max_bytes=settings.max_reference_bytes,
        timeout=min(settings.download_timeout, settings.reference_download_deadline),
        deadline=settings.reference_download_deadline,
        allow_private=settings.allow_private_urls,
        max_connections=REFERENCE_CONNECTIONS,
    )


__all__ = [
    "PROVIDER_CLASSES",
    "ImageProvider",
    "TaskProvider",
    "build_downloader",
    "build_providers",
    "build_reference_downloader",
]
