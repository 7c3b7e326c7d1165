"""Discord JSON error responses (https://discord.com/developers/docs/topics/opcodes-and-status-codes)."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """Raised inside the fake to produce a Discord error response."""

    def __init__(
        self,
        status: int,
        code: int,
        message: str,
        errors: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body Discord sends for this error."""
        body: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def invalid_form_body(path: str, code: str, message: str) -> ApiError:
    """400 / 50035 with Discord's nested ``errors`` structure; ``path`` like ``"data.content"``."""
    errors: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path.split(".")):
        errors = {key: errors}
    return ApiError(400, 50035, "Invalid Form Body", errors)


def unauthorized() -> ApiError:
    """401 for a missing/invalid bot token."""
    return ApiError(401, 0, "401: Unauthorized")


def missing_permissions() -> ApiError:
    """403 / 50013."""
    return ApiError(403, 50013, "Missing Permissions")


def missing_access() -> ApiError:
    """403 / 50001."""
    return ApiError(403, 50001, "Missing Access")


def unknown_channel() -> ApiError:
    """404 / 10003."""
    return ApiError(404, 10003, "Unknown Channel")


def unknown_message() -> ApiError:
    """404 / 10008."""
    return ApiError(404, 10008, "Unknown Message")


def unknown_guild() -> ApiError:
    """404 / 10004."""
    return ApiError(404, 10004, "Unknown Guild")


def unknown_member() -> ApiError:
    """404 / 10007."""
    return ApiError(404, 10007, "Unknown Member")


def unknown_user() -> ApiError:
    """404 / 10013."""
    return ApiError(404, 10013, "Unknown User")


def unknown_webhook() -> ApiError:
    """404 / 10015."""
    return ApiError(404, 10015, "Unknown Webhook")


def unknown_interaction() -> ApiError:
    """404 / 10062 (not acknowledged in time, or never existed)."""
    return ApiError(404, 10062, "Unknown interaction")


def already_acknowledged() -> ApiError:
    """400 / 40060."""
    return ApiError(400, 40060, "Interaction has already been acknowledged.")


def invalid_webhook_token() -> ApiError:
    """401 / 50027 (interaction token older than 15 minutes)."""
    return ApiError(401, 50027, "Invalid Webhook Token")


def entity_too_large() -> ApiError:
    """413 / 40005."""
    return ApiError(413, 40005, "Request entity too large")


def empty_message() -> ApiError:
    """400 / 50006."""
    return ApiError(400, 50006, "Cannot send an empty message")


def unknown_command() -> ApiError:
    """404 / 10063."""
    return ApiError(404, 10063, "Unknown application command")
