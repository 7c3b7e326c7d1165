"""Domain errors.

Every error Palette raises on purpose derives from :class:`PaletteError`. Its ``message`` is written for
the person who asked for the image: it never contains secrets, stack traces or Discord words, so the
presentation layer (Discord, CLI) can show it as it is.

``retryable`` tells the job layer whether trying again (the same route later, or another route) can help.
"""

from __future__ import annotations


class PaletteError(Exception):
    """Base class; ``message`` is safe to show to users."""

    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- bad input: raised before any network call, never charged ---


class ValidationError(PaletteError):
    """The request itself is wrong (unknown model, unsupported ratio, empty prompt...)."""


class UnknownModel(ValidationError):
    pass


class UnsupportedOption(ValidationError):
    pass


class InvalidPrompt(ValidationError):
    pass


class InvalidImage(ValidationError):
    """A reference image is not an image we can use (wrong type, truncated, too large...)."""


class NoRouteAvailable(ValidationError):
    """No enabled provider can serve this model with these options."""


class ConfigError(PaletteError):
    """The bot is misconfigured (missing token or key); the operator must act."""


# --- provider faults ---


class ProviderError(PaletteError):
    """A provider call failed. ``provider`` is the provider key; ``status`` the HTTP status if any."""

    default_message = "The image provider failed."

    def __init__(
        self,
        message: str | None = None,
        *,
        provider: str = "",
        status: int | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message or self.default_message)
        self.provider = provider
        self.status = status
        # Seconds the provider asked us to wait (Retry-After), if it said.
        self.retry_after = retry_after
        # The request may have reached the provider (e.g. a POST that timed out while it was generating),
        # so resending it could be billed twice: the transport does not retry such errors itself.
        self.maybe_charged = False
        # Provider's own wording (trimmed); for logs and for InvalidRequest messages. Never holds secrets:
        # transports only copy response bodies, never request headers.
        self.detail = detail

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(provider={self.provider!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )


class InvalidRequest(ProviderError):
    """The provider rejected the request's parameters (HTTP 400/404/422)."""

    default_message = "The provider rejected the request."


class AuthError(ProviderError):
    """The API key is missing, wrong or lacks the plan the API needs (HTTP 401/403)."""

    default_message = "The provider refused our credentials; the bot owner must check the API key."


class OutOfCredits(ProviderError):
    """The provider account has no credits left (HTTP 402)."""

    default_message = "The provider account is out of credits."


class RateLimited(ProviderError):
    """HTTP 429; ``retry_after`` seconds if the provider said."""

    retryable = True
    default_message = "The provider is rate limiting us; try again shortly."


class ProviderBusy(ProviderError):
    """The provider said it is busy (HTTP 409, ListenHub ``free_relax_busy``/``free_relax_timeout``)."""

    retryable = True
    default_message = "The provider is busy right now; nothing was charged, try again later."


class ContentRefused(ProviderError):
    """The provider's safety system declined the prompt or the result."""

    default_message = "The provider declined to generate this image (safety filter)."


class ProviderUnavailable(ProviderError):
    """5xx, connection failure, malformed or truncated response: the provider could not serve us now."""

    retryable = True
    default_message = "The provider is unavailable right now."


class ProviderTimeout(ProviderError):
    """The request (or the task's overall deadline) timed out."""

    retryable = True
    default_message = "The provider took too long to answer."


class TaskFailed(ProviderError):
    """An asynchronous task ended as failed or cancelled."""

    default_message = "The provider could not generate the image."


class ResultDownloadError(ProviderError):
    """A result URL could not be downloaded (dead link, too large, not an image, forbidden address)."""

    retryable = True
    default_message = "The generated image could not be downloaded from the provider."
