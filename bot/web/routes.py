"""The site's pages and form posts. Thin: checks who may do what, then calls into storage, the image
store and the moderation service."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from bot.catalog import MODELS, RESOLUTIONS
from bot.errors import PaletteError
from bot.i18n import Text, msg
from bot.imagestore import BROWSER_TYPES
from bot.moderation import modlog
from bot.moderation.bans import dashboard_report_reason, describe_duration, parse_duration
from bot.moderation.service import MAX_LIMIT
from bot.storage.web import WebSession, search_words
from bot.web import security
from bot.web.app import (
    PAGE_SIZE,
    HttpError,
    PostedForm,
    Viewer,
    WebContext,
    check_csrf,
    current_viewer,
    is_moderator,
    page,
    redirect,
    render,
    require_member,
    require_viewer,
)
from bot.web.discord import OAuthError, can_manage
from bot.web.texts import text

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 3600.0
#: Ban lengths a moderator picks from on the dashboard.
BAN_CHOICES = ("1h", "1d", "7d", "30d")


MAX_ID = 2**63 - 1
MAX_PAGE = 100_000


def _int(value: str | None, default: int | None = None) -> int | None:
    """A whole number from a URL or form (at most 64 bits), else ``default``."""
    if value is None or value == "" or len(value) > 20:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        return default
    return number if -MAX_ID <= number <= MAX_ID else default


def _path_id(request: Request, name: str) -> int:
    value = _int(request.path_params.get(name))
    if value is None or value < 0:
        raise HttpError(404, text("not_found"))
    return value


# ---------------------------------------------------------------------------------------------- login


@page
async def home(ctx: WebContext, request: Request) -> Response:
    viewer = await current_viewer(ctx, request)
    if viewer is not None:
        return RedirectResponse("/gallery", status_code=303)
    return render(ctx, request, "home.html", viewer=None)


@page
async def login(ctx: WebContext, request: Request) -> Response:
    state, nonce = security.new_token(), security.new_token()
    verifier, challenge = security.pkce_pair()
    next_path = security.safe_next(request.query_params.get("next"))
    await ctx.db.web.add_state(
        security.state_key(state, nonce), verifier, next_path, ctx.clock() + security.STATE_TTL
    )
    response = RedirectResponse(ctx.oauth.login_url(state, challenge), status_code=303)
    response.set_cookie(
        security.LOGIN_COOKIE, nonce, max_age=int(security.STATE_TTL), httponly=True, samesite="lax",
        secure=ctx.secure_cookies, path="/auth/callback",
    )  # fmt: skip
    return response


@page
async def callback(ctx: WebContext, request: Request) -> Response:
    state = request.query_params.get("state") or ""
    code = request.query_params.get("code") or ""
    nonce = request.cookies.get(security.LOGIN_COOKIE) or ""
    taken = (
        await ctx.db.web.take_state(security.state_key(state, nonce), ctx.clock())
        if state and nonce
        else None
    )
    if taken is None:
        raise HttpError(400, text("login_expired"))
    verifier, next_path = taken
    if not code:
        raise HttpError(400, text("login_failed"))
    try:
        token = await ctx.oauth.exchange(code, verifier)
        user = await ctx.oauth.user(token)
        guilds = await ctx.oauth.guilds(token)
    except OAuthError as exc:
        log.warning("web login failed: %s", exc)
        raise HttpError(400, text("login_failed")) from None
    cookie = security.new_token()
    now = ctx.clock()
    lifetime = ctx.settings.web_session_hours * 3600
    await ctx.db.web.create_session(
        WebSession(
            id=security.digest(cookie),
            user_id=user.id,
            username=user.username,
            access_token=ctx.tokens.seal(token),
            guilds=guilds,
            guilds_at=now,
            csrf=security.new_token(),
            created_at=now,
            expires_at=now + lifetime,
            locale=user.locale,
        )
    )
    response = RedirectResponse(next_path, status_code=303)
    response.delete_cookie(security.LOGIN_COOKIE, path="/auth/callback")
    response.set_cookie(
        security.SESSION_COOKIE,
        cookie,
        max_age=int(lifetime),
        httponly=True,
        samesite="lax",
        secure=ctx.secure_cookies,
        path="/",
    )
    return response


@page
async def logout(ctx: WebContext, request: Request) -> Response:
    viewer = await require_viewer(ctx, request)
    await check_csrf(ctx, request, viewer)
    await ctx.db.web.delete_session(viewer.session.id)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(security.SESSION_COOKIE, path="/", secure=ctx.secure_cookies, httponly=True)
    return response


# ---------------------------------------------------------------------------------------------- galleries


def _filters(request: Request) -> dict[str, Any]:
    q = (request.query_params.get("q") or "")[:200]
    model = request.query_params.get("model") or ""
    page_no = min(MAX_PAGE, max(1, _int(request.query_params.get("page"), 1) or 1))
    return {"q": q, "model": model if any(m.key == model for m in MODELS) else "", "page": page_no}


def _pages(total: int, page_no: int) -> dict[str, int]:
    pages = max(1, -(-total // PAGE_SIZE))
    return {"page": min(page_no, pages), "pages": pages, "total": total}


@page
async def my_gallery(ctx: WebContext, request: Request) -> Response:
    viewer = await require_viewer(ctx, request)
    f = _filters(request)
    server = _int(request.query_params.get("server"))
    images, total = await ctx.db.web.user_images(
        viewer.user_id,
        words=search_words(f["q"]),
        model=f["model"] or None,
        guild_id=server,
        limit=PAGE_SIZE,
        offset=(f["page"] - 1) * PAGE_SIZE,
    )
    models, guild_ids = await ctx.db.web.user_models_and_guilds(viewer.user_id)
    return render(
        ctx, request, "gallery.html",
        viewer=viewer, images=images, filters=f, server=server, models=models,
        servers=[(g, viewer.guild_name(g)) for g in guild_ids], paging=_pages(total, f["page"]),
        title=msg("Your images"), action="/gallery",
    )  # fmt: skip


async def _viewable(ctx: WebContext, viewer: Viewer, result_id: int) -> Any:
    """The image if this viewer may see it: its owner; a member of its server when the server's gallery
    is on and it was posted in a non-NSFW channel; a moderator of its server when it was reported."""
    image = await ctx.db.web.image(result_id)
    if image is None:
        raise HttpError(404, text("not_found"))
    if image.user_id == viewer.user_id:
        return image
    if image.guild_id is not None and viewer.guild(image.guild_id) is not None:
        if image.sfw and await ctx.db.web.gallery_enabled(image.guild_id):
            return image
        if await ctx.db.web.report_job(image.guild_id, image.job_id) and await is_moderator(
            ctx, viewer, image.guild_id
        ):
            return image
    raise HttpError(404, text("not_found"))  # never say whether someone else's image exists


@page
async def image_page(ctx: WebContext, request: Request) -> Response:
    viewer = await require_viewer(ctx, request)
    image = await _viewable(ctx, viewer, _path_id(request, "result_id"))
    siblings = await ctx.db.web.job_images(image.job_id)
    chain = await ctx.db.web.parent_chain(image.job_id) if image.user_id == viewer.user_id else []
    original = await asyncio.to_thread(ctx.store.find_original, image.user_id, image.job_id, image.filename)
    # HEIC/HEIF originals are offered as downloads; browsers are shown the thumbnail.
    displayable = original is not None and original[1] in BROWSER_TYPES.values()
    jump = (
        f"https://discord.com/channels/{image.guild_id or '@me'}/{image.channel_id}/{image.message_id}"
        if image.channel_id and image.message_id
        else None
    )
    return render(
        ctx, request, "image.html",
        viewer=viewer, image=image, params=image.params_dict, siblings=siblings, chain=chain,
        has_original=original is not None, displayable=displayable, jump=jump,
        mine=image.user_id == viewer.user_id, server_name=viewer.guild_name(image.guild_id),
    )  # fmt: skip


@page
async def image_file(ctx: WebContext, request: Request) -> Response:
    viewer = await require_viewer(ctx, request)
    image = await _viewable(ctx, viewer, _path_id(request, "result_id"))
    kind = request.path_params["kind"]
    if kind not in ("thumb", "original"):
        raise HttpError(404, text("not_found"))
    headers = {"Cache-Control": "private, max-age=3600"}
    if kind == "thumb":
        path = await ctx.store.thumbnail(image.user_id, image.job_id, image.filename)
        if path is None:
            raise HttpError(404, text("not_found"))
        return FileResponse(path, media_type="image/webp", headers=headers)
    found = await asyncio.to_thread(ctx.store.find_original, image.user_id, image.job_id, image.filename)
    if found is None:
        raise HttpError(404, text("not_found"))
    path, mime = found
    if request.query_params.get("download"):
        return FileResponse(path, media_type=mime, filename=path.name, headers=headers)
    return FileResponse(path, media_type=mime, headers=headers)


@page
async def delete_image(ctx: WebContext, request: Request) -> Response:
    viewer = await require_viewer(ctx, request)
    await check_csrf(ctx, request, viewer)
    image = await ctx.db.web.image(_path_id(request, "result_id"))
    if image is None or image.user_id != viewer.user_id:
        raise HttpError(404, text("not_found"))
    job = await ctx.db.jobs.get_job(image.job_id)
    targets = {(i.channel_id, i.message_id) for i in await ctx.db.web.job_images(image.job_id)}
    if job is not None and job.channel_id and job.result_message_id:
        targets.add((job.channel_id, job.result_message_id))
    for channel_id, message_id in targets:
        if channel_id and message_id:
            await ctx.bot.delete_message(channel_id, message_id)
    now = ctx.clock()
    await ctx.db.moderation.resolve_reports(image.job_id, "deleted by its owner", now)
    await ctx.db.web.forget_job(image.job_id, now)
    await ctx.store.delete_job(image.user_id, image.job_id)
    return redirect(ctx, "/gallery", notice=text("deleted"))


@page
async def servers(ctx: WebContext, request: Request) -> Response:
    viewer = await require_viewer(ctx, request)
    rows = []
    enabled_ids = await ctx.db.web.enabled_galleries(list(viewer.guilds))
    for guild_id, guild in sorted(viewer.guilds.items(), key=lambda kv: str(kv[1]["name"]).lower()):
        enabled = guild_id in enabled_ids
        manage = can_manage(guild)
        if enabled or manage:
            rows.append({"id": guild_id, "name": guild["name"], "gallery": enabled, "manage": manage})
    return render(ctx, request, "servers.html", viewer=viewer, rows=rows)


@page
async def server_gallery(ctx: WebContext, request: Request) -> Response:
    viewer = await require_viewer(ctx, request)
    guild_id = _path_id(request, "guild_id")
    guild = require_member(viewer, guild_id)
    if not await ctx.db.web.gallery_enabled(guild_id):
        raise HttpError(404, text("gallery_off"))
    f = _filters(request)
    images, total = await ctx.db.web.guild_images(
        guild_id, words=search_words(f["q"]), model=f["model"] or None,
        limit=PAGE_SIZE, offset=(f["page"] - 1) * PAGE_SIZE,
    )  # fmt: skip
    return render(
        ctx, request, "gallery.html",
        viewer=viewer, images=images, filters=f, server=None, models=[m.key for m in MODELS], servers=[],
        paging=_pages(total, f["page"]), title=msg("{server}: gallery", server=guild["name"]),
        action=f"/servers/{guild_id}",
        guild=guild, guild_id=guild_id, moderator=await is_moderator(ctx, viewer, guild_id),
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------- dashboard


async def _moderator(ctx: WebContext, request: Request) -> tuple[Viewer, int, dict[str, Any]]:
    viewer = await require_viewer(ctx, request)
    guild_id = _path_id(request, "guild_id")
    guild = viewer.guild(guild_id)
    if guild is None or not await is_moderator(ctx, viewer, guild_id):
        raise HttpError(403, text("not_moderator"))
    return viewer, guild_id, guild


@page
async def dashboard(ctx: WebContext, request: Request) -> Response:
    viewer, guild_id, guild = await _moderator(ctx, request)
    policy = await ctx.db.moderation.get_policy(guild_id)
    now = ctx.clock()
    bans = [b for b in await ctx.db.moderation.bans(guild_id) if b.active(now)]
    reports = await ctx.db.web.open_reports(guild_id)
    blocked = await ctx.db.web.blocked_attempts(guild_id)
    names = await ctx.bot.user_names(
        [r.reported_id for r in reports] + [b.user_id for b in bans] + [a.user_id for a in blocked]
    )
    return render(
        ctx, request, "dashboard.html",
        viewer=viewer, guild=guild, guild_id=guild_id, policy=policy,
        reports=reports, blocked=blocked, names=names,
        bans=bans, blocklist=await ctx.db.moderation.blocklist(guild_id), manage=can_manage(guild),
        models=MODELS, resolutions=RESOLUTIONS, ban_choices=BAN_CHOICES, max_limit=MAX_LIMIT,
        gallery=await ctx.db.web.gallery_enabled(guild_id),
        error=request.query_params.get("error"), describe_duration=describe_duration,
        roles=await ctx.bot.guild_roles(guild_id), channels=await ctx.bot.text_channels(guild_id),
    )  # fmt: skip


@page
async def report_action(ctx: WebContext, request: Request) -> Response:
    viewer, guild_id, _guild = await _moderator(ctx, request)
    form = await check_csrf(ctx, request, viewer)
    job = await ctx.db.jobs.get_job(_path_id(request, "job_id"))
    if job is None or job.guild_id != guild_id:
        raise HttpError(404, text("not_found"))
    action = request.path_params["action"]
    now = ctx.clock()
    back = f"/servers/{guild_id}/dashboard"
    if action == "delete":
        targets = {(i.channel_id, i.message_id) for i in await ctx.db.web.job_images(job.id)}
        if job.channel_id and job.result_message_id:
            targets.add((job.channel_id, job.result_message_id))
        for channel_id, message_id in targets:
            if channel_id and message_id:
                await ctx.bot.delete_message(channel_id, message_id)
        await ctx.db.moderation.resolve_reports(job.id, "deleted", now)
        await ctx.db.web.forget_job(job.id, now)
        await ctx.store.delete_job(job.user_id, job.id)
        ctx.moderation.emit(
            modlog.deleted_result(guild_id, job_id=job.id, user_id=job.user_id, actor_id=viewer.user_id)
        )
        return redirect(ctx, back, notice=text("report_deleted"))
    if action == "ban":
        choice = form.get("duration") or BAN_CHOICES[0]
        if choice not in BAN_CHOICES:
            raise HttpError(400, text("bad_duration"))
        ban = await ctx.moderation.ban(
            guild_id, job.user_id, actor_id=viewer.user_id, duration=choice,
            reason=dashboard_report_reason(job.id),
        )  # fmt: skip
        await ctx.db.moderation.resolve_reports(job.id, "banned", now)
        length = describe_duration((ban.expires_at or now) - now)
        return redirect(ctx, back, notice=text("report_banned", duration=length))
    if action == "dismiss":
        await ctx.db.moderation.resolve_reports(job.id, "dismissed", now)
        return redirect(ctx, back, notice=text("report_dismissed"))
    raise HttpError(404, text("not_found"))


@page
async def lift_ban(ctx: WebContext, request: Request) -> Response:
    viewer, guild_id, _guild = await _moderator(ctx, request)
    await check_csrf(ctx, request, viewer)
    user_id = _path_id(request, "user_id")
    lifted = await ctx.moderation.unban(guild_id, user_id, actor_id=viewer.user_id)
    return redirect(
        ctx, f"/servers/{guild_id}/dashboard", notice=text("ban_lifted" if lifted else "ban_missing")
    )


def _limit(form: dict[str, str], key: str, label: Text) -> int | None:
    raw = (form.get(key) or "").strip()
    if raw == "":
        return None
    value = _int(raw)
    if value is None or not 0 <= value <= MAX_LIMIT:
        raise PolicyInputError(text("bad_number", field=label, max=MAX_LIMIT))
    return value


class PolicyInputError(Exception):
    """A dashboard form value the policy cannot take; ``text`` says why."""

    def __init__(self, message: Text) -> None:
        super().__init__(str(message))
        self.text = message


def _ids(form: PostedForm, key: str, known: set[int]) -> tuple[int, ...]:
    """Channel ids picked in a multi-select; only the server's own channels."""
    values = form.getlist(key)
    picked = tuple(dict.fromkeys(v for v in (_int(x) for x in values) if v is not None))
    if any(v not in known for v in picked):
        raise PolicyInputError(text("not_found"))
    return picked


async def _manager(ctx: WebContext, request: Request) -> tuple[Viewer, int, PostedForm]:
    viewer, guild_id, guild = await _moderator(ctx, request)
    form = await check_csrf(ctx, request, viewer)
    if not can_manage(guild):  # the same rule as /palette: Manage Server
        raise HttpError(403, text("not_manager"))
    return viewer, guild_id, form


@page
async def save_policy(ctx: WebContext, request: Request) -> Response:
    viewer, guild_id, form = await _manager(ctx, request)
    back = f"/servers/{guild_id}/dashboard"
    try:
        section = form.get("section")
        if section == "limits":
            changes: dict[str, Any] = {
                "daily_limit": _limit(form, "daily_limit", msg("Daily limit")),
                "hourly_limit": _limit(form, "hourly_limit", msg("Hourly limit")),
                "daily_pool": _limit(form, "daily_pool", msg("Server pool")) or None,
                "max_images": _limit(form, "max_images", msg("Max images")) or None,
                "max_resolution": form.get("max_resolution") or None,
            }
            what = msg("limits")
        elif section == "models":
            allowed = tuple(k for k in (form.get("allowed_models") or "").split(",") if k.strip())
            allowed = tuple(dict.fromkeys(k.strip() for k in allowed))
            changes = {
                "allowed_models": allowed,
                "default_model": (form.get("default_model") or "").strip() or None,
            }
            what = msg("models")
        elif section == "channels":
            known = {cid for cid, _ in await ctx.bot.text_channels(guild_id)}
            allowed = _ids(form, "allowed_channels", known)
            denied = _ids(form, "denied_channels", known)
            changes = {"allowed_channels": allowed, "denied_channels": () if allowed else denied}
            what = msg("channels")
        elif section == "roles":
            roles = {rid for rid, _ in await ctx.bot.guild_roles(guild_id)}
            channels = {cid for cid, _ in await ctx.bot.text_channels(guild_id)}
            mod_role = _int(form.get("mod_role_id"))
            log_channel = _int(form.get("modlog_channel_id"))
            if (mod_role is not None and mod_role not in roles) or (
                log_channel is not None and log_channel not in channels
            ):
                raise PolicyInputError(text("not_found"))
            changes = {"mod_role_id": mod_role, "modlog_channel_id": log_channel}
            what = msg("moderator role and mod log")
        elif section == "autoban":
            hits = _int(form.get("autoban_hits"))
            if hits is None or not 0 <= hits <= 100:
                raise PolicyInputError(text("bad_number", field=msg("Blocked prompts"), max=100))
            window = parse_duration(form.get("autoban_window") or "")
            duration = parse_duration(form.get("autoban_duration") or "")
            if window is None or duration is None:
                raise PolicyInputError(text("bad_duration"))
            changes = {"autoban_hits": hits, "autoban_window": window, "autoban_duration": duration}
            what = msg("auto-ban")
        elif section == "nsfw":
            changes = {
                "nsfw_mode": form.get("nsfw_mode") if form.get("nsfw_mode") in ("same", "relaxed") else "same"
            }
            what = msg("NSFW channels")
        elif section == "builtin":
            changes = {"builtin_blocklist": form.get("builtin_blocklist") == "on"}
            what = msg("built-in blocklist")
        elif section == "gallery":
            enabled = form.get("gallery") == "on"
            before = await ctx.db.web.set_gallery(guild_id, enabled, viewer.user_id, ctx.clock())
            if before != enabled:
                ctx.moderation.emit(
                    modlog.policy_change(
                        guild_id, actor_id=viewer.user_id, what=msg("web gallery"),
                        before=msg("on") if before else msg("off"),
                        after=msg("on") if enabled else msg("off"),
                    )
                )  # fmt: skip
            return redirect(ctx, back, notice=text("policy_saved"))
        else:
            raise HttpError(400, text("not_found"))
        await ctx.moderation.update_policy(guild_id, viewer.user_id, what, **changes)
    except (PolicyInputError, PaletteError) as exc:
        return redirect(ctx, back, error=exc.text)
    return redirect(ctx, back, notice=text("policy_saved"))


@page
async def blocklist_action(ctx: WebContext, request: Request) -> Response:
    viewer, guild_id, form = await _manager(ctx, request)
    back = f"/servers/{guild_id}/dashboard"
    pattern = (form.get("pattern") or "").strip()
    try:
        if request.path_params["action"] == "add":
            kind = "regex" if form.get("kind") == "regex" else "word"
            scope = "sfw" if form.get("scope") == "sfw" else "all"
            await ctx.moderation.add_block(guild_id, viewer.user_id, kind, pattern, scope)  # type: ignore[arg-type]
            return redirect(ctx, back, notice=text("block_added"))
        removed = await ctx.moderation.remove_block(guild_id, viewer.user_id, pattern)
    except PaletteError as exc:
        return redirect(ctx, back, error=exc.text)
    return redirect(ctx, back, notice=text("block_removed" if removed else "block_missing"))


# ---------------------------------------------------------------------------------------------- upkeep


def start_housekeeping(ctx: WebContext) -> asyncio.Task[None]:
    """Hourly: expired sessions and logins go; originals past IMAGE_RETENTION_DAYS are pruned."""

    async def loop() -> None:
        while True:
            with contextlib.suppress(Exception):
                await ctx.db.web.sweep(ctx.clock())
            try:
                pruned = await ctx.store.prune()
                if pruned:
                    log.info("pruned %d original image(s) past IMAGE_RETENTION_DAYS", pruned)
            except Exception:
                log.exception("could not prune the image store")
            await asyncio.sleep(HOUSEKEEPING_SECONDS)

    return asyncio.create_task(loop(), name="palette-web-housekeeping")


ROUTES = [
    Route("/", home, methods=["GET"]),
    Route("/login", login, methods=["GET"]),
    Route("/auth/callback", callback, methods=["GET"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/gallery", my_gallery, methods=["GET"]),
    Route("/images/{result_id}", image_page, methods=["GET"]),
    Route("/images/{result_id}/delete", delete_image, methods=["POST"]),
    Route("/images/{result_id}/{kind:str}", image_file, methods=["GET"]),
    Route("/servers", servers, methods=["GET"]),
    Route("/servers/{guild_id}", server_gallery, methods=["GET"]),
    Route("/servers/{guild_id}/dashboard", dashboard, methods=["GET"]),
    Route("/servers/{guild_id}/reports/{job_id}/{action}", report_action, methods=["POST"]),
    Route("/servers/{guild_id}/bans/{user_id}/lift", lift_ban, methods=["POST"]),
    Route("/servers/{guild_id}/policy", save_policy, methods=["POST"]),
    Route("/servers/{guild_id}/blocklist/{action}", blocklist_action, methods=["POST"]),
]
