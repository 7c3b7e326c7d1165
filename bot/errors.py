"""Domain errors.

Every error Palette raises on purpose derives from :class:`PaletteError`. It carries what happened as
data: ``text``, a :class:`bot.i18n.Text` (the message's English id and its values), which the Discord
layer puts into the user's words (``render(locale, error.text)``); ``message`` is the English rendering
(logs, the CLI, the database). It never contains secrets, stack traces or Discord words.

``retryable`` tells the job layer whether trying again (the same route later, or another route) can help.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bot.i18n import N_, SOURCE_LOCALE, Text


class PaletteError(Exception):
    """Base class. ``PaletteError("The prompt is {length} characters long.", length=n)``: the first
    argument is the English message with named placeholders (its catalog id), the keywords its values
    (which may be :class:`bot.i18n.Text`, :class:`bot.i18n.Number` ...), or a ready :class:`Text`."""

    retryable: bool = False

    def __init__(self, message: str | Text, /, **params: Any) -> None:
        self.text = message if isinstance(message, Text) else Text(message, params)
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The English wording (safe to show, log and store)."""
        return self.text.render(SOURCE_LOCALE)

    def scrub(self, fn: Callable[[str], str]) -> None:
        """Apply ``fn`` to every text value of the message (removing a secret from provider wording)."""
        self.text = self.text.map_strings(fn)
        self.args = (self.message,)


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

    default_message = N_("The image provider failed.")

    def __init__(
        self,
        message: str | Text | None = None,
        *,
        provider: str = "",
        status: int | None = None,
        detail: str | None = None,
        retry_after: float | None = None,
        **params: Any,
    ) -> None:
        super().__init__(message or self.default_message, **params)
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

    default_message = N_("The provider rejected the request.")


class AuthError(ProviderError):
    """The API key is missing, wrong or lacks the plan the API needs (HTTP 401/403)."""

    default_message = N_("The provider refused our credentials; the bot owner must check the API key.")


class OutOfCredits(ProviderError):
    """The provider account has no credits left (HTTP 402)."""

    default_message = N_("The provider account is out of credits.")


class RateLimited(ProviderError):
    """HTTP 429; ``retry_after`` seconds if the provider said."""

    retryable = True
    default_message = N_("The provider is rate limiting us; try again shortly.")


class ProviderBusy(ProviderError):
    """The provider said it is busy (HTTP 409, ListenHub ``free_relax_busy``/``free_relax_timeout``)."""

    retryable = True
    default_message = N_("The provider is busy right now; nothing was charged, try again later.")


class ContentRefused(ProviderError):
    """The provider's safety system declined the prompt or the result."""

    default_message = N_("The provider declined to generate this image (safety filter).")


class ProviderUnavailable(ProviderError):
    """5xx, connection failure, malformed or truncated response: the provider could not serve us now."""

    retryable = True
    default_message = N_("The provider is unavailable right now.")


class ProviderTimeout(ProviderError):
    """The request (or the task's overall deadline) timed out."""

    retryable = True
    default_message = N_("The provider took too long to answer.")


class TaskFailed(ProviderError):
    """An asynchronous task ended as failed or cancelled."""

    default_message = N_("The provider could not generate the image.")


class ResultDownloadError(ProviderError):
    """A result URL could not be downloaded (dead link, too large, not an image, forbidden address)."""

    retryable = True
    default_message = N_("The generated image could not be downloaded from the provider.")
