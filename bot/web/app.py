"""The ASGI app: what it is made of (:class:`WebContext`), sessions, access checks and security headers.

Every page that shows or changes a server's data checks, on that request, that the signed-in user is a
member (their servers come from ``GET /users/@me/guilds``, refreshed at login and at most every
``WEB_GUILDS_REFRESH`` seconds) and, for the dashboard, a moderator. Sessions, logins and CSRF tokens
are rows in the database (:mod:`bot.storage.web`), so any number of web processes can serve one site.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from babel import negotiate_locale
from jinja2 import Environment, FileSystemLoader, pass_context, select_autoescape
from jinja2.runtime import Context
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles

from bot.catalog import get_model
from bot.config import Settings
from bot.i18n import SOURCE_LOCALE, Text, resolve, shipped_locales, t, tn
from bot.i18n import render as render_text
from bot.imagestore import ImageStore
from bot.moderation.bans import ban_reason
from bot.moderation.service import ModerationService
from bot.storage import Ban, Database
from bot.storage.web import WebSession
from bot.web import security
from bot.web.discord import BotActions, OAuthClient, OAuthError, can_manage
from bot.web.texts import text

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
PAGE_SIZE = 24
#: The largest form the site accepts (every form is a few fields).
MAX_FORM_BYTES = 64 * 1024

CSP = (
    "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; object-src 'none'; "
    "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


@dataclass
class WebContext:
    """Everything the routes use, made once by :func:`bot.web.server` (or a test)."""

    settings: Settings
    db: Database
    store: ImageStore
    oauth: OAuthClient
    moderation: ModerationService
    bot: BotActions
    tokens: security.TokenBox
    signer: security.Signer
    clock: Callable[[], float] = time.time
    #: Background tasks started with the app (pruning), stopped with it.
    tasks: list[Any] = field(default_factory=list)

    @property
    def secure_cookies(self) -> bool:
        return (self.settings.web_base_url or "").lower().startswith("https://")

    @property
    def origin(self) -> str:
        parts = urlsplit(self.settings.web_base_url or "")
        return f"{parts.scheme}://{parts.netloc}"


# ---------------------------------------------------------------------------------------------- language

#: The language of the request being served: the signed-in user's Discord locale, else the browser's
#: Accept-Language, else English. Set by :func:`page` and :func:`current_viewer`; read when words are made.
LOCALE: contextvars.ContextVar[str] = contextvars.ContextVar("web_locale", default=SOURCE_LOCALE)

#: Accept-Language tags that mean the source language (``en``, ``en-GB`` ... read English).
_ENGLISH = "en"


def accepted_locale(header: str | None) -> str:
    """The shipped locale that best fits an ``Accept-Language`` header (Babel's negotiation, by q)."""
    if not header:
        return SOURCE_LOCALE
    wanted: list[tuple[float, int, str]] = []
    for index, part in enumerate(header.split(",")[:20]):
        tag, _, params = part.strip().partition(";")
        tag = tag.strip()
        if not tag or tag == "*" or len(tag) > 35:
            continue
        q = 1.0
        if params.strip().startswith("q="):
            try:
                q = float(params.strip()[2:])
            except ValueError:
                continue
        if q > 0:
            wanted.append((-q, index, tag))
    preferred = [tag for _, _, tag in sorted(wanted)]
    available = [*shipped_locales(), _ENGLISH]
    found = negotiate_locale(preferred, available, sep="-")
    if found is None:
        # A browser language without a catalog of its region (``pt``, ``es-MX``) reads its language's
        # catalog. Only here: a Discord locale does not (see bot.i18n.resolve), but a web page has no
        # Discord command descriptions to agree with, and the browser asked for that language.
        by_language = {code.split("-")[0].lower(): code for code in reversed(shipped_locales())}
        for tag in preferred:
            code = by_language.get(tag.replace("_", "-").split("-")[0].lower())
            if code is not None and code != SOURCE_LOCALE:
                return code
        return SOURCE_LOCALE
    return SOURCE_LOCALE if found == _ENGLISH else resolve(found)


def words(value: object) -> str:
    """A message (:class:`bot.i18n.Text`, plain text) in the request's language."""
    return render_text(LOCALE.get(), value)


class HttpError(Exception):
    """Answer the request with an error page (``message`` is shown, escaped, in the request's language)."""

    def __init__(self, status: int, message: str | Text) -> None:
        super().__init__(str(message))
        self.status = status
        self.message = message


@dataclass
class Viewer:
    """The signed-in user of a request, with their servers (fresh enough)."""

    session: WebSession
    guilds: dict[int, dict[str, Any]]

    @property
    def user_id(self) -> int:
        return self.session.user_id

    @property
    def csrf(self) -> str:
        return self.session.csrf

    def guild(self, guild_id: int | None) -> dict[str, Any] | None:
        return self.guilds.get(int(guild_id)) if guild_id is not None else None

    def guild_name(self, guild_id: int | None) -> str:
        g = self.guild(guild_id)
        if g is not None:
            return str(g["name"])
        if guild_id is None:
            return t(LOCALE.get(), "Direct messages")
        return t(LOCALE.get(), "Server {id}", id=guild_id)


# ---------------------------------------------------------------------------------------------- templates


def _date(value: float | None) -> str:
    if not value:
        return ""
    return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M UTC")


def _model_label(key: str) -> str:
    model = get_model(key)
    return model.label if model is not None else key


@pass_context
def _gettext(context: Context, message: str, /, **params: Any) -> str:
    """``_("...", name=value)`` in a template: the page's language (``locale``), ``{name}`` filled."""
    return t(context.get("locale"), message, **params)


@pass_context
def _ngettext(context: Context, singular: str, plural: str, n: int, /, **params: Any) -> str:
    return tn(context.get("locale"), singular, plural, n, **params)


@pass_context
def _pgettext(context: Context, message_context: str, message: str, /, **params: Any) -> str:
    return Text(message, params, context=message_context).render(context.get("locale"))


@pass_context
def _ban_reason(context: Context, ban: Ban) -> str:
    """``{{ b | ban_reason }}``: a ban's reason in the page's language (Palette's own reasons are
    translated, a moderator's are shown as typed)."""
    return render_text(context.get("locale"), ban_reason(ban))


def make_templates() -> Environment:
    """Jinja2 with its i18n extension: ``_()``, ``ngettext()`` and ``pgettext()`` translate through the
    catalogs of :mod:`bot.i18n` into the language of the page being rendered (its ``locale``), with the
    catalogs' ``{name}`` placeholders. The messages are found by :mod:`bot.i18n.extract`."""
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        enable_async=False,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=_gettext, ngettext=_ngettext, pgettext=_pgettext, newstyle=False
    )
    env.filters["date"] = _date
    env.filters["model_label"] = _model_label
    env.filters["ban_reason"] = _ban_reason
    return env


# ---------------------------------------------------------------------------------------------- sessions


async def current_viewer(ctx: WebContext, request: Request) -> Viewer | None:
    """The request's signed-in user, their servers refreshed when older than ``WEB_GUILDS_REFRESH``;
    None when the cookie is missing, unknown or expired, or Discord no longer accepts the login."""
    token = request.cookies.get(security.SESSION_COOKIE)
    if not token:
        return None
    now = ctx.clock()
    session = await ctx.db.web.get_session(security.digest(token), now)
    if session is None:
        return None
    if session.locale:
        LOCALE.set(resolve(session.locale))  # the user's Discord language beats the browser's
    guilds = session.guilds
    if now - session.guilds_at > ctx.settings.web_guilds_refresh:
        access = ctx.tokens.open(session.access_token)
        if access is None:
            await ctx.db.web.delete_session(session.id)
            return None
        try:
            guilds = await ctx.oauth.guilds(access)
        except OAuthError as exc:
            if exc.status == 401:  # the user revoked Palette's access: the session ends
                await ctx.db.web.delete_session(session.id)
                return None
            if now - session.guilds_at > 3 * ctx.settings.web_guilds_refresh:
                log.warning("could not refresh a web session's servers (%s); asking to log in again", exc)
                return None
            log.warning("could not refresh a web session's servers (%s); using the last list", exc)
        else:
            await ctx.db.web.update_guilds(session.id, guilds, now)
    return Viewer(session, {int(g["id"]): g for g in guilds if str(g.get("id", "")).isdigit()})


async def require_viewer(ctx: WebContext, request: Request) -> Viewer:
    viewer = await current_viewer(ctx, request)
    if viewer is None:
        raise LoginRequired(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    return viewer


class LoginRequired(Exception):
    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PostedForm(dict[str, str]):
    """A posted form's text fields (the first value of each) and, with :meth:`getlist`, all values."""

    def __init__(self, items: list[tuple[str, str]]) -> None:
        super().__init__()
        self._all: dict[str, list[str]] = {}
        for key, value in items:
            self.setdefault(key, value)
            self._all.setdefault(key, []).append(value)

    def getlist(self, key: str) -> list[str]:
        return list(self._all.get(key, []))


async def check_csrf(ctx: WebContext, request: Request, viewer: Viewer) -> PostedForm:
    """The posted form, once its CSRF token matches the session's (and the Origin, when sent, is ours)."""
    origin = request.headers.get("origin")
    if origin and ctx.settings.web_base_url and origin.rstrip("/") != ctx.origin:
        raise HttpError(403, text("csrf"))
    try:
        length = int(request.headers.get("content-length") or 0)
    except ValueError:
        length = MAX_FORM_BYTES + 1
    if length > MAX_FORM_BYTES or request.headers.get("transfer-encoding"):
        raise HttpError(413, text("too_large"))
    form = await request.form(max_files=0, max_fields=200)
    values = PostedForm([(k, v) for k, v in form.multi_items() if isinstance(v, str)])
    if not security.same(values.get("csrf"), viewer.csrf):
        raise HttpError(403, text("csrf"))
    return values


def require_member(viewer: Viewer, guild_id: int) -> dict[str, Any]:
    guild = viewer.guild(guild_id)
    if guild is None:
        raise HttpError(403, text("not_member"))
    return guild


async def is_moderator(ctx: WebContext, viewer: Viewer, guild_id: int) -> bool:
    """Manage Server (owner, Administrator) or the server's moderator role (asked of Discord as the bot)."""
    guild = viewer.guild(guild_id)
    if guild is None:
        return False
    if can_manage(guild):
        return True
    policy = await ctx.moderation.policy(guild_id)
    if policy is None or policy.mod_role_id is None:
        return False
    roles = await ctx.bot.member_roles(guild_id, viewer.user_id)
    return roles is not None and policy.mod_role_id in roles


# ---------------------------------------------------------------------------------------------- the app


def redirect(
    ctx: WebContext, path: str, *, notice: str | Text | None = None, error: str | Text | None = None
) -> Any:
    """303 to ``path`` carrying a notice or error the next page shows (signed: see :class:`Signer`), in
    the language of the request that made it."""
    from urllib.parse import urlencode

    from starlette.responses import RedirectResponse

    params = {}
    for key, shown in (("notice", notice), ("error", error)):
        message = words(shown) if shown is not None else None
        if message:
            params[key] = message
            params[f"{key}_sig"] = ctx.signer.sign(f"{key}:{message}")
    return RedirectResponse(path + (f"?{urlencode(params)}" if params else ""), status_code=303)


def flash(ctx: WebContext, request: Request, key: str) -> str | None:
    """The notice or error of a :func:`redirect`, when its signature is ours."""
    message = request.query_params.get(key)
    checked = ctx.signer.check(
        f"{key}:{message}" if message else None, request.query_params.get(f"{key}_sig")
    )
    return message if checked else None


def render(ctx: WebContext, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    values.setdefault("notice", flash(ctx, request, "notice"))
    values.setdefault("error", flash(ctx, request, "error"))
    locale = LOCALE.get()
    values = {k: render_text(locale, v) if isinstance(v, Text) else v for k, v in values.items()}
    env: Environment = request.app.state.templates
    html = env.get_template(name).render(
        request=request, base_url=ctx.settings.web_base_url, locale=locale, **values
    )
    return HTMLResponse(html, status_code=status)


Handler = Callable[[WebContext, Request], Awaitable[Response]]


def page(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """A route: the context from the app, error pages for :class:`HttpError`, login for anonymous."""

    async def endpoint(request: Request) -> Response:
        ctx: WebContext = request.app.state.ctx
        LOCALE.set(accepted_locale(request.headers.get("accept-language")))
        try:
            return await handler(ctx, request)
        except LoginRequired as exc:
            if request.method != "GET":
                return render(ctx, request, "error.html", 403, message=text("login_required"), viewer=None)
            return RedirectResponse("/login?" + _query(next=exc.next_path), status_code=303)
        except HttpError as exc:
            viewer = await current_viewer(ctx, request)
            return render(ctx, request, "error.html", exc.status, message=words(exc.message), viewer=viewer)

    endpoint.__name__ = handler.__name__
    return endpoint


def _query(**values: str) -> str:
    from urllib.parse import urlencode

    return urlencode(values)


class SecurityHeaders:
    """CSP, no framing, no sniffing, no referrer beyond the site, no caching of pages."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = {
                    b"content-security-policy": CSP.encode(),
                    b"x-frame-options": b"DENY",
                    b"x-content-type-options": b"nosniff",
                    b"referrer-policy": b"same-origin",
                }
                if b"cache-control" not in names:
                    extra[b"cache-control"] = b"no-store"
                headers.extend((k, v) for k, v in extra.items() if k not in names)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(ctx: WebContext) -> Any:
    """The site's ASGI application."""
    from bot.web import routes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        task = routes.start_housekeeping(ctx)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    app = Starlette(
        routes=[*routes.ROUTES, Mount("/static", StaticFiles(directory=HERE / "static"), name="static")],
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.templates = make_templates()
    return SecurityHeaders(app)
