"""Words of the web layer that are not in a template (error pages, notices): English message ids of the
catalogs in :mod:`bot.i18n`, shown in the request's language (:func:`bot.web.app.words`)."""

from __future__ import annotations

from bot.i18n import N_, Text

TEXTS: dict[str, str] = {
    "login_failed": N_("Logging in with Discord did not work. Please try again."),
    "login_expired": N_("That login link has expired or was already used. Please log in again."),
    "login_required": N_("Please log in with Discord to see this page."),
    "forbidden": N_("You don't have access to this page."),
    "not_member": N_("This server's gallery is only for its members."),
    "not_moderator": N_(
        "The moderation dashboard is for members with Manage Server or the server's moderator role."
    ),
    "not_manager": N_("Only members with Manage Server can change the server's policy."),
    "gallery_off": N_(
        "This server has not turned its web gallery on (a moderator can: /palette gallery on)."
    ),
    "not_found": N_("There is nothing here (it may have been deleted)."),
    "csrf": N_(
        "This form has expired or did not come from Palette's site. Go back, reload the page and try again."
    ),
    "deleted": N_("Deleted: the image is gone from the site, from Palette's records and from Discord."),
    "report_deleted": N_("Deleted the reported result."),
    "report_banned": N_("Banned the member from generating here for {duration}."),
    "report_dismissed": N_("Dismissed the report."),
    "ban_lifted": N_("Lifted the ban."),
    "ban_missing": N_("That ban was already gone."),
    "policy_saved": N_("Saved. The bot uses the new settings at once."),
    "block_added": N_("Added to the blocklist."),
    "block_removed": N_("Removed from the blocklist."),
    "block_missing": N_("That entry was not on the blocklist."),
    "bad_number": N_("{field} must be a whole number from 0 to {max}."),
    "bad_duration": N_("Durations look like 30m, 2h or 1d."),
    "too_large": N_("That form is too large."),
}


def text(key: str, **values: object) -> Text:
    """The message ``key`` with its values, to be put into words in the request's language."""
    return Text(TEXTS[key], values)
