"""Words of the web layer that are not in a template (error pages, notices), kept together for
localization."""

from __future__ import annotations

TEXTS: dict[str, str] = {
    "login_failed": "Logging in with Discord did not work. Please try again.",
    "login_expired": "That login link has expired or was already used. Please log in again.",
    "login_required": "Please log in with Discord to see this page.",
    "forbidden": "You don't have access to this page.",
    "not_member": "This server's gallery is only for its members.",
    "not_moderator": (
        "The moderation dashboard is for members with Manage Server or the server's moderator role."
    ),
    "not_manager": "Only members with Manage Server can change the server's policy.",
    "gallery_off": "This server has not turned its web gallery on (a moderator can: /palette gallery on).",
    "not_found": "There is nothing here (it may have been deleted).",
    "csrf": (
        "This form has expired or did not come from Palette's site. Go back, reload the page and try again."
    ),
    "deleted": "Deleted: the image is gone from the site, from Palette's records and from Discord.",
    "report_deleted": "Deleted the reported result.",
    "report_banned": "Banned the member from generating here for {duration}.",
    "report_dismissed": "Dismissed the report.",
    "ban_lifted": "Lifted the ban.",
    "ban_missing": "That ban was already gone.",
    "policy_saved": "Saved. The bot uses the new settings at once.",
    "block_added": "Added to the blocklist.",
    "block_removed": "Removed from the blocklist.",
    "block_missing": "That entry was not on the blocklist.",
    "bad_number": "{field} must be a whole number from 0 to {max}.",
    "bad_duration": "Durations look like 30m, 2h or 1d.",
    "too_large": "That form is too large.",
}


def text(key: str, **values: object) -> str:
    return TEXTS[key].format(**values) if values else TEXTS[key]
