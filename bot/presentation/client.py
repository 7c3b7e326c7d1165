"""The discord.py client: wiring, command sync, and the one error handler on the command tree."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import logging
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.catalog import DEFAULT_MODEL, get_model
from bot.config import Settings
from bot.errors import PaletteError
from bot.generation import Generator
from bot.i18n import N_, Joined, preload, render, t, tp
from bot.jobs.service import JobService
from bot.jobs.spool import EncoderPool
from bot.jobs.worker import Presence, Worker
from bot.limits import LimitPolicy
from bot.logs import hide_modal_values, log_context
from bot.moderation.service import ModerationService
from bot.ops import metrics
from bot.ops.server import gateway_latencies
from bot.ops.shards import IdentifyGate, ShardPresence, claim_command_sync
from bot.presentation.flows import Flows
from bot.presentation.locales import user_locale
from bot.presentation.moderation import ModLogSender
from bot.presentation.presenter import DiscordPresenter
from bot.presentation.translator import PaletteTranslator
from bot.presentation.views import CancelButton, ResultButton
from bot.providers.transport import Downloader
from bot.storage import Database
from bot.storage.queue import QueueRepository
from bot.storage.shards import SqlShardRepository
from bot.styles import StyleService
from bot.tenants import TenantService

log = logging.getLogger(__name__)
#: Discord's error code for an interaction answered too late (or twice).
UNKNOWN_INTERACTION = 10062

COGS = ("cogs.imagine", "cogs.quota", "cogs.history", "cogs.admin", "cogs.styles", "cogs.compare")
# View channel, send messages, embed links, attach files, read message history.
BOT_PERMISSIONS = discord.Permissions(
    view_channel=True, send_messages=True, embed_links=True, attach_files=True, read_message_history=True
)
GENERIC_ERROR = N_("Something went wrong on our side. Nothing was charged; please try again.")
#: Permission names as Discord's client shows them (context "permission" in the catalogs).
PERMISSION = "permission"


def permission_names(locale: str, names: list[str]) -> Joined:
    """``manage_guild`` -> "Manage Server" (Discord's wording, in ``locale``)."""
    return Joined(tuple(permission_name(locale, name) for name in names), ", ")


def permission_name(locale: str, name: str) -> str:
    known = {
        "manage_guild": tp(locale, "permission", "Manage Server"),
        "manage_messages": tp(locale, "permission", "Manage Messages"),
        "view_channel": tp(locale, "permission", "View Channel"),
        "send_messages": tp(locale, "permission", "Send Messages"),
        "attach_files": tp(locale, "permission", "Attach Files"),
        "embed_links": tp(locale, "permission", "Embed Links"),
        "read_message_history": tp(locale, "permission", "Read Message History"),
    }
    return known.get(name, name.replace("_", " ").title())


def point_discord_at(settings: Settings) -> None:
    """Aim discord.py at DISCORD_API_BASE / DISCORD_GATEWAY_URL (Discord's own by default).

    ``Route.BASE`` is changed in place: the webhook module imported ``Route`` at import time, so
    replacing the class would miss interaction callbacks.
    """
    discord.http.Route.BASE = settings.discord_api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.discord_gateway_url)


class PaletteTree(app_commands.CommandTree["PaletteBot"]):
    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        # Runs in the task that runs the command: its log lines name the user and server (JSON logs).
        log_context(user_id=interaction.user.id, guild_id=interaction.guild_id)
        return True

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        await self.client.report_error(interaction, error)


class PaletteBot(commands.Bot):
    """The gateway: connected to Discord's gateway, it answers interactions and queues jobs. In the
    all-in-one role it also carries this process's :class:`~bot.jobs.worker.Worker` (attached by
    :func:`bot.app.create_bot`), which posts through this client's REST API."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        generator: Generator,
        downloader: Downloader,
        *,
        queue: QueueRepository,
        role: str = "all",
        worker_id: str,
        sync_only: bool = False,
        **client_options: Any,
    ) -> None:
        intents = discord.Intents.none()
        intents.guilds = True
        # A server's provider key arrives in a modal: discord.py's DEBUG log of gateway events hides it.
        hide_modal_values()
        # No text Palette posts (provider wording and prompts included) may ping @everyone, a role or a
        # user; the few messages meant to ping their requester say so explicitly (presenter._channel_send).
        client_options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=PaletteTree,
            help_command=None,
            **client_options,
        )
        self.settings = settings
        self.db = db
        self.generator = generator
        self.downloader = downloader
        self.queue = queue
        self.role = role
        self.worker_id = worker_id
        self.modlog = ModLogSender(self)
        self.moderation = ModerationService(db.moderation, settings, sink=self.modlog.submit)
        # Servers' own provider keys; cached per server, dropped whenever its moderation version moves.
        self.tenants = TenantService(db.tenants, settings)
        self.moderation.on_invalidate.append(self.tenants.invalidate)
        # Limits come from the moderation service's cached server state: no database read per command.
        self.policy = LimitPolicy(
            settings, db.moderation, source=self.moderation.limit_policy, self_funded=self.tenants.self_funded
        )
        self.jobs = JobService(db.jobs, queue, generator, self.policy)
        self.jobs.tenants = self.tenants
        self.flows = Flows(self)
        self.styles = StyleService(db.styles)
        self.presence = Presence(queue, role, worker_id)
        # Which shards this process runs (and their latency), in the database for /palette status.
        self.shard_repo = SqlShardRepository(db.engine)
        self.shard_presence = ShardPresence(
            self.shard_repo, worker_id, lambda: self.shard_count or 1, lambda: gateway_latencies(self)
        )
        # This process's worker (all-in-one), its presenter and encoder processes: see bot.app.
        self.worker: Worker | None = None
        self.presenter: DiscordPresenter | None = None
        self.encoders: EncoderPool | None = None
        self.sync_only = sync_only
        self.synced: bool | None = None
        self._gc_frozen = False

    # ------------------------------------------------------------------ start-up

    async def setup_hook(self) -> None:
        # The catalogs are compiled off the event loop, before any interaction needs one.
        await asyncio.to_thread(preload)
        await self.tree.set_translator(PaletteTranslator())
        for cog in COGS:
            await self.load_extension(cog)
        self.add_dynamic_items(ResultButton, CancelButton)
        self.synced = await self.sync_commands(force=self.sync_only)
        if self.sync_only:
            return
        gc.collect()  # start-up's garbage, while no interaction can arrive yet (frozen in on_ready)
        await self.presence.start()
        self.shard_presence.start()
        self.moderation.watch()
        if self.worker is not None:
            # Jobs left by a previous run are claimed like any other (a dead worker's once its lease ends).
            await self.worker.start()

    async def on_ready(self) -> None:
        if self.sync_only:
            await self.close()
            return
        assert self.user is not None
        # Everything loaded so far (modules, caches) lives as long as the process: keep it out of the
        # cyclic collector's full passes, which otherwise rescan it while jobs churn through objects.
        # The collection that clears start-up's garbage ran in setup_hook, before the gateway connected:
        # here, with interactions already arriving, a full pass would stall the loop ~100 ms; freezing
        # only moves the collector's lists.
        if not self._gc_frozen:  # once: on_ready fires again after reconnects
            self._gc_frozen = True
            gc.freeze()
        url = discord.utils.oauth_url(
            self.application_id or self.user.id,
            permissions=BOT_PERMISSIONS,
            scopes=("bot", "applications.commands"),
        )
        log.info("logged in as %s (%s); invite: %s", self.user, self.user.id, url)

    def command_payload(self, guild: discord.abc.Snowflake | None) -> list[dict[str, Any]]:
        return [cmd.to_dict(self.tree) for cmd in self.tree.get_commands(guild=guild)]

    async def translated_command_payload(self, guild: discord.abc.Snowflake | None) -> list[dict[str, Any]]:
        """What ``tree.sync`` sends: the commands with their localizations."""
        translator = self.tree.translator
        if translator is None:
            return self.command_payload(guild)
        return [
            await cmd.get_translated_payload(self.tree, translator)
            for cmd in self.tree.get_commands(guild=guild)
        ]

    async def sync_commands(self, *, force: bool = False) -> bool:
        """Sync only when the command tree changed since the last sync (Discord caps daily creates)."""
        guild = (
            discord.Object(self.settings.discord_dev_guild_id) if self.settings.discord_dev_guild_id else None
        )
        if guild is not None:
            self.tree.copy_global_to(guild=guild)
        # Translations count: a changed catalog re-syncs the commands' localizations.
        payload = await self.translated_command_payload(guild)
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        key = f"command_hash:{guild.id if guild else 'global'}"
        if not force and await self.db.kv.get(key) == digest:
            log.info("slash commands unchanged; not syncing")
            return False
        # Once per deployment: of several gateway processes starting with a new command tree, one syncs.
        if not force and not await claim_command_sync(
            self.shard_repo, key, digest, self.worker_id, lambda: self.db.kv.get(key)
        ):
            log.info("slash commands synced by another gateway process; not syncing")
            return False
        await self.tree.sync(guild=guild)
        await self.db.kv.set(key, digest)
        log.info("synced %d slash commands %s", len(payload), f"to guild {guild.id}" if guild else "globally")
        return True

    def default_model(self) -> str:
        models = self.generator.models()
        keys = [m.key for m in models]
        return DEFAULT_MODEL if DEFAULT_MODEL in keys else (keys[0] if keys else DEFAULT_MODEL)

    def default_edit_model(self, n_refs: int) -> str:
        for key in [self.default_model()] + [m.key for m in self.generator.models()]:
            model = get_model(key)
            if model and model.supports_edit and model.max_references >= n_refs:
                return key
        return self.default_model()

    # ------------------------------------------------------------------ errors

    async def report_error(self, interaction: discord.Interaction, error: BaseException) -> None:
        """Map an error to an ephemeral message; use a followup when the interaction was answered."""
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(original, discord.NotFound) and original.code == UNKNOWN_INTERACTION:
            # Acknowledged after Discord's 3 s (a flood of commands, a stalled process): nothing was
            # reserved yet, as every command defers first; no reply can reach the user any more.
            log.warning("interaction %s was acknowledged too late; Discord dropped it", interaction.id)
            metrics.interaction_expired()
            return
        # Ephemeral: in the language of the person who sees it.
        locale = user_locale(interaction)
        if isinstance(original, PaletteError):
            text = render(locale, original.text)
        elif isinstance(original, app_commands.MissingPermissions):
            names = permission_names(locale, list(original.missing_permissions))
            text = t(locale, "You need the {permissions} permission for that.", permissions=names)
        elif isinstance(original, app_commands.BotMissingPermissions):
            names = permission_names(locale, list(original.missing_permissions))
            text = t(locale, "I'm missing the {permissions} permission here.", permissions=names)
        elif isinstance(original, app_commands.NoPrivateMessage):
            text = t(locale, "That command only works in a server.")
        elif isinstance(original, app_commands.CheckFailure):
            text = t(locale, "You can't use that here.")
        elif isinstance(original, app_commands.TransformerError):
            text = t(locale, "`{value}` is not a valid value for that option.", value=original.value)
        else:
            log.error("unhandled error in an interaction", exc_info=original)
            text = t(locale, GENERIC_ERROR)
        try:
            await send_ephemeral(interaction, text)
        except discord.HTTPException as exc:
            log.warning("could not report an error to the user (%s)", exc)

    async def close(self) -> None:
        self.jobs.stop()
        if self.worker is not None:
            await self.worker.stop(grace=0)
        await self.presence.stop()
        await self.shard_presence.stop()
        await self.moderation.stop_watching()
        await super().close()
        self.moderation.close()


class ShardedPaletteBot(PaletteBot, commands.AutoShardedBot):
    """The gateway on discord.py's AutoShardedClient: the shards ``shard_ids`` of ``shard_count`` (both
    from the settings; see :func:`bot.app.create_bot`). Every shard's IDENTIFY waits for its bucket's
    turn across the deployment (:class:`bot.ops.shards.IdentifyGate`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.identify_gate = IdentifyGate(self.shard_repo, self.worker_id, self._max_concurrency)

    async def _max_concurrency(self) -> int:
        _count, _url, limits = await self.http.get_bot_gateway()
        return int(limits.get("max_concurrency", 1))

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        await self.identify_gate.wait_turn(shard_id)


class WorkerClient(discord.Client):
    """The worker's Discord: the REST API only (``login``, never ``connect``). It posts results, edits
    status messages through interaction webhooks and sends mod-log entries; it receives nothing."""

    def __init__(self, settings: Settings, db: Database, **client_options: Any) -> None:
        client_options.setdefault("allowed_mentions", discord.AllowedMentions.none())
        # No gateway, so intents change nothing; "guilds" keeps discord.py's state from warning.
        intents = discord.Intents.none()
        intents.guilds = True
        super().__init__(intents=intents, **client_options)
        self.settings = settings
        self.db = db
        self.modlog = ModLogSender(self)  # type: ignore[arg-type]
        self.moderation = ModerationService(db.moderation, settings, sink=self.modlog.submit)
        self.tenants = TenantService(db.tenants, settings)
        self.moderation.on_invalidate.append(self.tenants.invalidate)

    async def setup_hook(self) -> None:
        await asyncio.to_thread(preload)  # the catalogs of the messages it posts, off the event loop
        # Called by login(): interaction webhooks need the application id.
        if self.application_id is None:
            raise RuntimeError("Discord did not name this bot's application; a worker cannot post results")

    async def close(self) -> None:
        await self.moderation.stop_watching()
        await super().close()
        self.moderation.close()


async def send_ephemeral(interaction: discord.Interaction, text: str) -> None:
    if not interaction.response.is_done():
        await interaction.response.send_message(text, ephemeral=True)
        return
    if interaction.extras.get("public_defer"):
        # A public "thinking…" message is showing: remove it so the error stays private.
        interaction.extras["public_defer"] = False
        with contextlib.suppress(discord.HTTPException):
            await interaction.delete_original_response()
    await interaction.followup.send(text, ephemeral=True)
