"""Discord's permission algorithm (base permissions, then channel overwrites)."""

from __future__ import annotations

from .models import ALL_PERMISSIONS, Channel, Guild, Member, Permission


def base_permissions(guild: Guild, member: Member, *, is_bot: bool = False) -> int:
    """Guild-level permissions of ``member`` (owner and ADMINISTRATOR get everything)."""
    if member.user.id == guild.owner_id:
        return ALL_PERMISSIONS
    if is_bot and guild.bot_permissions_override is not None:
        perms = guild.bot_permissions_override
    else:
        perms = guild.everyone_role.permissions
        for role_id in member.roles:
            try:
                perms |= guild.get_role(role_id).permissions
            except KeyError:
                continue
    if perms & Permission.ADMINISTRATOR:
        return ALL_PERMISSIONS
    return perms


def channel_permissions(guild: Guild, channel: Channel, member: Member, *, is_bot: bool = False) -> int:
    """Permissions of ``member`` in ``channel``, including overwrites and implicit denials."""
    perms = base_permissions(guild, member, is_bot=is_bot)
    if perms & Permission.ADMINISTRATOR or member.user.id == guild.owner_id:
        return ALL_PERMISSIONS
    everyone = channel.overwrites.get(guild.id)
    if everyone is not None:
        perms = (perms & ~everyone.deny) | everyone.allow
    allow = deny = 0
    for role_id in member.roles:
        overwrite = channel.overwrites.get(role_id)
        if overwrite is not None and overwrite.type == 0:
            allow |= overwrite.allow
            deny |= overwrite.deny
    perms = (perms & ~deny) | allow
    own = channel.overwrites.get(member.user.id)
    if own is not None and own.type == 1:
        perms = (perms & ~own.deny) | own.allow
    if not perms & Permission.VIEW_CHANNEL:
        return 0
    if not perms & Permission.SEND_MESSAGES:
        perms &= ~(
            Permission.SEND_TTS_MESSAGES
            | Permission.MENTION_EVERYONE
            | Permission.EMBED_LINKS
            | Permission.ATTACH_FILES
        )
    return int(perms)


def missing(perms: int, required: int) -> list[str]:
    """Names of the bits of ``required`` absent from ``perms``."""
    return [p.name or str(p.value) for p in Permission if p & required and not p & perms]
