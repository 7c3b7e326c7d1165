"""The web gallery and moderation dashboard: ``python -m bot web`` (and the all-in-one process, when
configured).

An ASGI app (Starlette) with server-rendered Jinja2 templates; it works with JavaScript off. Routes are
thin (:mod:`bot.web.routes`): storage goes through :mod:`bot.storage.web` and the other repositories,
moderation through :class:`bot.moderation.service.ModerationService`, Discord through
:mod:`bot.web.discord` (OAuth2 as the user, REST as the bot). Words shown to people are in
:mod:`bot.web.texts` and the templates.
"""
