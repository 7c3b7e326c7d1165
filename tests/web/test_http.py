"""The site's security checks over HTTP (httpx against the ASGI app, the fake Discord's OAuth2 on a real
socket): login with state + PKCE, sessions and CSRF, who sees which image, the dashboard's 403."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest

from bot.web import security
from tests.fakes.processes import query
from tests.web.harness import BASE, running_site


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


@pytest.fixture
async def site(tmp_path: Path, database_url: str):
    """The site on SQLite, then on PostgreSQL."""
    async with running_site(tmp_path, database_url) as running:
        yield running


async def test_login_uses_state_and_pkce_and_sets_a_safe_cookie(site) -> None:
    web = site.browser()
    start = await web.get("/login")
    url = httpx.URL(start.headers["location"])
    assert url.params["code_challenge_method"] == "S256"
    assert url.params["scope"] == "identify guilds"
    assert url.params["redirect_uri"] == BASE + "/auth/callback"
    assert len(url.params["state"]) >= 32
    site.fake.oauth.approve_as(site.alice)
    async with httpx.AsyncClient() as discord_side:
        back = (await discord_side.get(str(url))).headers["location"].removeprefix(BASE)
    done = await web.get(back)
    cookie = done.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=lax" in cookie.lower() and "max-age=" in cookie.lower()
    assert "secure" not in cookie.lower()  # http base URL
    token = web.cookies[security.SESSION_COOKIE]
    rows = await query(site.ctx.settings.database_url, "SELECT id, access_token FROM web_sessions")
    assert rows[0][0] == security.digest(token)  # only the hash of the cookie is stored
    # The OAuth access token is stored encrypted, never as is.
    assert site.fake.oauth.tokens and all(t not in rows[0][1] for t in site.fake.oauth.tokens)
    # A state works once: replaying the callback is refused.
    again = await site.browser().get(back)
    assert again.status_code == 400


async def test_forged_state_and_wrong_verifier_are_refused(site) -> None:
    web = site.browser()
    forged = await web.get("/auth/callback?code=abc&state=not-ours")
    assert forged.status_code == 400 and security.SESSION_COOKIE not in web.cookies
    # A code exchanged with another login's verifier fails at Discord.
    start = await web.get("/login")
    site.fake.oauth.approve_as(site.alice)
    async with httpx.AsyncClient() as discord_side:
        back = httpx.URL((await discord_side.get(start.headers["location"])).headers["location"])
    other = await site.browser().get("/login")
    other_state = httpx.URL(other.headers["location"]).params["state"]
    swapped = await web.get(f"/auth/callback?code={back.params['code']}&state={other_state}")
    assert swapped.status_code == 400 and security.SESSION_COOKIE not in web.cookies
    # Login CSRF: a callback link (code + state) opened in another browser logs nobody in.
    victim = site.browser()
    assert (await victim.get(f"/auth/callback?{back.query.decode()}")).status_code == 400
    assert security.SESSION_COOKIE not in victim.cookies
    # Discord (the fake) refuses a code with the wrong PKCE verifier or client secret.
    async with httpx.AsyncClient() as discord_side:
        token_url = f"{site.fake.api_base}/oauth2/token"
        form = {"grant_type": "authorization_code", "code": back.params["code"],
                "redirect_uri": BASE + "/auth/callback", "code_verifier": "wrong"}  # fmt: skip
        wrong = await discord_side.post(token_url, data=form, auth=(str(site.fake.application_id), "x"))
        assert wrong.status_code == 401
        fresh = await site.browser().get("/login")
        code = httpx.URL((await discord_side.get(fresh.headers["location"])).headers["location"]).params[
            "code"
        ]
        secret = (str(site.fake.application_id), site.fake.oauth.client_secret)
        bad_pkce = await discord_side.post(token_url, data={**form, "code": code}, auth=secret)
        assert bad_pkce.status_code == 400
    assert site.fake.oauth.refusals[-2:] == ["invalid_client", "invalid_grant: code_verifier"]


async def test_open_redirect_after_login_is_not_possible(site) -> None:
    for bad in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        web = site.browser()
        start = await web.get("/login", params={"next": bad})
        site.fake.oauth.approve_as(site.alice)
        async with httpx.AsyncClient() as discord_side:
            back = (await discord_side.get(start.headers["location"])).headers["location"]
        done = await web.get(back.removeprefix(BASE))
        assert done.headers["location"] == "/gallery"


async def test_own_images_only_and_unguessable_ids_are_checked(site) -> None:
    _job, [mine], _ = await site.seed(site.alice, "a red fox in snow", channel=site.nsfw_channel)
    _job, [theirs], _ = await site.seed(site.bob, "bob's private cat", channel=site.nsfw_channel)
    alice = await site.login(site.alice)
    page = await alice.get("/gallery")
    assert page.status_code == 200
    assert "a red fox in snow" in page.text and "private cat" not in page.text
    assert (await alice.get(f"/images/{mine}/thumb")).headers["content-type"] == "image/webp"
    assert (await alice.get(f"/images/{mine}/original")).headers["content-type"] == "image/png"
    for path in (f"/images/{theirs}", f"/images/{theirs}/thumb", f"/images/{theirs}/original"):
        assert (await alice.get(path)).status_code == 404
    anonymous = site.browser()
    assert (await anonymous.get(f"/images/{mine}/thumb")).status_code == 303  # to the login


async def test_search_and_filters(site) -> None:
    await site.seed(site.alice, "blue whale at dawn")
    await site.seed(site.alice, "green forest 100%_sure", model="nano-banana-pro")
    alice = await site.login(site.alice)
    found = await alice.get("/gallery", params={"q": "WHALE dawn"})
    assert "blue whale" in found.text and "green forest" not in found.text
    assert "blue whale" not in (await alice.get("/gallery", params={"q": "%"})).text
    by_model = await alice.get("/gallery", params={"model": "nano-banana-pro"})
    assert "green forest" in by_model.text and "blue whale" not in by_model.text


async def test_server_gallery_members_only_sfw_only(site) -> None:
    _j, [sfw], _ = await site.seed(site.alice, "sunny meadow")
    _j, [nsfw], _ = await site.seed(site.alice, "after dark picture", channel=site.nsfw_channel)
    bob = await site.login(site.bob)
    gid = site.guild.id
    assert (await bob.get(f"/servers/{gid}")).status_code == 404  # off by default
    await site.db.web.set_gallery(gid, True, site.owner.id, 0.0)
    page = await bob.get(f"/servers/{gid}")
    assert "sunny meadow" in page.text and "after dark" not in page.text
    assert (await bob.get(f"/images/{sfw}/thumb")).status_code == 200
    assert (await bob.get(f"/images/{nsfw}/thumb")).status_code == 404
    outsider = await site.login(site.outsider)
    refused = await outsider.get(f"/servers/{gid}")
    assert refused.status_code == 403 and "sunny meadow" not in refused.text
    assert (await outsider.get(f"/images/{sfw}/thumb")).status_code == 404


async def test_csrf_and_logout_end_the_session(site) -> None:
    _job, [rid], _ = await site.seed(site.alice, "keep me")
    alice = await site.login(site.alice)
    forged = await alice.post(f"/images/{rid}/delete", data={"csrf": "guess"})
    assert forged.status_code == 403
    cross_site = await alice.post(
        f"/images/{rid}/delete", data={"csrf": csrf_of((await alice.get("/gallery")).text)},
        headers={"Origin": "https://evil.example"},
    )  # fmt: skip
    assert cross_site.status_code == 403
    huge = await alice.post(f"/images/{rid}/delete", data={"csrf": "x", "pad": "a" * 100_000})
    assert huge.status_code == 413
    assert await site.db.web.image(rid) is not None
    token = csrf_of((await alice.get("/gallery")).text)
    assert (await alice.post("/logout", data={"csrf": "nope"})).status_code == 403
    out = await alice.post("/logout", data={"csrf": token})
    assert out.status_code == 303
    assert await query(site.ctx.settings.database_url, "SELECT COUNT(*) FROM web_sessions") == [(0,)]
    assert (await alice.get("/gallery")).status_code == 303


async def test_delete_removes_record_files_and_discord_message(site) -> None:
    job, [rid], message_id = await site.seed(site.alice, "delete me")
    alice = await site.login(site.alice)
    assert (await alice.get(f"/images/{rid}/thumb")).status_code == 200
    thumb = site.ctx.store.thumb_path(site.alice.id, job, f"palette-{job}-1.png")
    assert thumb is not None and thumb.is_file()
    token = csrf_of((await alice.get(f"/images/{rid}")).text)
    done = await alice.post(f"/images/{rid}/delete", data={"csrf": token})
    assert done.status_code == 303
    assert await site.db.web.image(rid) is None
    assert not thumb.exists()
    deletes = [r for r in site.fake.requests if r.method == "DELETE" and r.path.endswith(f"/{message_id}")]
    assert deletes and deletes[0].status == 204  # gone from Discord too
    assert (await alice.get(f"/images/{rid}")).status_code == 404
    job_row = await site.db.jobs.get_job(job)
    assert job_row is not None and job_row.prompt == "" and job_row.committed == 1  # the ledger stays


async def test_dashboard_403_for_members_and_moderation_for_managers(site) -> None:
    gid = site.guild.id
    job, [rid], _ = await site.seed(site.bob, "reported thing", channel=site.nsfw_channel)
    await site.db.moderation.add_report(gid, job, site.alice.id, site.bob.id, 1.0)
    alice = await site.login(site.alice)
    page = await alice.get(f"/servers/{gid}/dashboard")
    assert page.status_code == 403 and "reported thing" not in page.text
    forged = await alice.post(f"/servers/{gid}/reports/{job}/dismiss", data={"csrf": "x"})
    assert forged.status_code == 403
    owner = await site.login(site.owner)
    board = await owner.get(f"/servers/{gid}/dashboard")
    assert board.status_code == 200 and "reported thing" in board.text
    assert f"by bob ({site.bob.id})" in board.text
    assert (await owner.get(f"/images/{rid}/thumb")).status_code == 200  # moderators see reported images
    token = csrf_of(board.text)
    banned = await owner.post(f"/servers/{gid}/reports/{job}/ban", data={"csrf": token, "duration": "1d"})
    assert banned.status_code == 303
    ban = await site.db.moderation.get_ban(gid, site.bob.id)
    assert ban is not None and ban.expires_at is not None
    assert not await site.db.web.open_reports(gid)
    lifted = await owner.post(f"/servers/{gid}/bans/{site.bob.id}/lift", data={"csrf": token})
    assert lifted.status_code == 303 and await site.db.moderation.get_ban(gid, site.bob.id) is None


async def test_mod_role_member_sees_dashboard_but_cannot_edit_policy(site) -> None:
    gid = site.guild.id
    role = site.fake.add_role(site.guild, "mods")
    site.guild.members[site.bob.id].roles = [role.id]
    await site.db.moderation.save_policy(
        (await site.db.moderation.get_policy(gid)).changed(mod_role_id=role.id), 0.0
    )
    bob = await site.login(site.bob)
    board = await bob.get(f"/servers/{gid}/dashboard")
    assert board.status_code == 200
    refused = await bob.post(
        f"/servers/{gid}/policy", data={"csrf": csrf_of(board.text), "section": "limits", "daily_limit": "5"}
    )
    assert refused.status_code == 403


async def test_policy_edit_uses_the_same_checks_and_applies_at_once(site) -> None:
    gid = site.guild.id
    owner = await site.login(site.owner)
    token = csrf_of((await owner.get(f"/servers/{gid}/dashboard")).text)
    bad = await owner.post(
        f"/servers/{gid}/policy", data={"csrf": token, "section": "models", "allowed_models": "nope-model"}
    )
    assert bad.status_code == 303 and "error=" in bad.headers["location"]
    assert (await site.db.moderation.get_policy(gid)).allowed_models == ()
    ok = await owner.post(
        f"/servers/{gid}/policy",
        data={"csrf": token, "section": "limits", "daily_limit": "7", "max_resolution": "2K"},
    )
    assert ok.status_code == 303
    policy = await site.ctx.moderation.policy(gid)
    assert policy is not None and policy.daily_limit == 7 and policy.max_resolution == "2K"
    huge = await owner.post(
        f"/servers/{gid}/policy", data={"csrf": token, "section": "limits", "daily_limit": "99999999"}
    )
    assert "error=" in huge.headers["location"]


async def test_hostile_prompt_is_escaped_and_headers_are_strict(site) -> None:
    hostile = '<script>alert(1)</script><img src=x onerror=alert(2)>"'
    _j, [rid], _ = await site.seed(site.alice, hostile)
    alice = await site.login(site.alice)
    for path in ("/gallery", f"/images/{rid}"):
        page = await alice.get(path)
        assert "<script>alert(1)" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "script-src 'self'" in page.headers["content-security-policy"]
        assert page.headers["x-frame-options"] == "DENY"
        assert site.fake.oauth.client_secret not in page.text


async def test_revoked_discord_access_ends_the_session_on_refresh(site) -> None:
    site.ctx.settings.web_guilds_refresh = 0.01
    alice = await site.login(site.alice)
    assert (await alice.get("/gallery")).status_code == 200
    site.fake.oauth.revoke(site.alice)
    import asyncio

    await asyncio.sleep(0.05)
    assert (await alice.get("/gallery")).status_code == 303


async def test_dashboard_policy_sections_check_ids_and_write_the_mod_log(site) -> None:
    gid = site.guild.id
    log_channel = site.fake.add_channel(site.guild, "mod-log")
    role = site.fake.add_role(site.guild, "palette-mods")
    owner = await site.login(site.owner)
    board = await owner.get(f"/servers/{gid}/dashboard")
    assert "#mod-log" in board.text and "palette-mods" in board.text
    token = csrf_of(board.text)
    post = f"/servers/{gid}/policy"
    foreign = await owner.post(post, data={"csrf": token, "section": "roles", "modlog_channel_id": "12345"})
    assert "error=" in foreign.headers["location"]
    ok = await owner.post(
        post,
        data={"csrf": token, "section": "roles", "mod_role_id": str(role.id),
              "modlog_channel_id": str(log_channel.id)},
    )  # fmt: skip
    assert "notice=" in ok.headers["location"]
    policy = await site.db.moderation.get_policy(gid)
    assert policy.mod_role_id == role.id and policy.modlog_channel_id == log_channel.id
    chans = await owner.post(
        post, data={"csrf": token, "section": "channels", "allowed_channels": [str(site.channel.id)]}
    )
    assert "notice=" in chans.headers["location"]
    assert (await site.db.moderation.get_policy(gid)).allowed_channels == (site.channel.id,)
    auto = await owner.post(
        post, data={"csrf": token, "section": "autoban", "autoban_hits": "4", "autoban_window": "5m",
                    "autoban_duration": "2h"},
    )  # fmt: skip
    assert "notice=" in auto.headers["location"]
    policy = await site.db.moderation.get_policy(gid)
    assert (policy.autoban_hits, policy.autoban_window, policy.autoban_duration) == (4, 300, 7200)
    bad = await owner.post(
        post, data={"csrf": token, "section": "autoban", "autoban_hits": "4", "autoban_window": "soon",
                    "autoban_duration": "2h"},
    )  # fmt: skip
    assert "error=" in bad.headers["location"]
    added = await owner.post(
        f"/servers/{gid}/blocklist/add", data={"csrf": token, "pattern": "Gore", "kind": "word"}
    )
    assert "notice=" in added.headers["location"]
    assert [e.pattern for e in await site.db.moderation.blocklist(gid)] == ["gore"]
    regex = await owner.post(
        f"/servers/{gid}/blocklist/add", data={"csrf": token, "pattern": "(a+)+$", "kind": "regex"}
    )
    assert "error=" in regex.headers["location"]  # the same pattern checks as /palette blocklist
    removed = await owner.post(f"/servers/{gid}/blocklist/remove", data={"csrf": token, "pattern": "gore"})
    assert "notice=" in removed.headers["location"]
    await site.client.modlog.drain(timeout=10)
    titles = [
        str(m.embeds[0].get("title", "")) + str(m.embeds[0].get("description", ""))
        for m in site.fake.channel_messages(log_channel)
        if m.embeds
    ]
    assert any("blocklist" in t.lower() for t in titles) and any("auto-ban" in t.lower() for t in titles)


async def test_blocked_prompts_are_listed_escaped(site) -> None:
    gid = site.guild.id
    await site.db.moderation.record_blocked(gid, site.bob.id, site.channel.id, "<b>nasty</b>", "nasty", 1.0,
                                            window=600)  # fmt: skip
    owner = await site.login(site.owner)
    board = await owner.get(f"/servers/{gid}/dashboard")
    assert "&lt;b&gt;nasty&lt;/b&gt;" in board.text and "<b>nasty" not in board.text


async def test_paging_and_parent_chain(site) -> None:
    first, [parent_rid], _ = await site.seed(site.alice, "the first one")
    _child, [child_rid], _ = await site.seed(site.alice, "the variation", parent=first)
    for i in range(25):
        await site.seed(site.alice, f"filler {i}")
    alice = await site.login(site.alice)
    page1 = await alice.get("/gallery")
    assert "Page 1 of 2" in page1.text and "the first one" not in page1.text
    page2 = await alice.get("/gallery", params={"page": 2})
    assert "the first one" in page2.text
    child = await alice.get(f"/images/{child_rid}")
    assert f'href="/images/{parent_rid}"' in child.text and "Made from" in child.text
    assert (
        (await alice.get(f"/images/{child_rid}/original", params={"download": 1}))
        .headers["content-disposition"]
        .startswith("attachment")
    )


async def test_notices_are_signed_and_odd_numbers_are_not_errors(site) -> None:
    alice = await site.login(site.alice)
    spoof = await alice.get("/gallery", params={"notice": "Your account is locked: visit evil.example"})
    assert "evil.example" not in spoof.text
    for path in ("/images/99999999999999999999999999", "/images/-1", "/servers/1e9"):
        assert (await alice.get(path)).status_code in (403, 404)
    assert (await alice.get("/gallery", params={"page": "9" * 40, "server": "9" * 30})).status_code == 200


async def test_sessions_expire_and_are_swept(site) -> None:
    import time

    alice = await site.login(site.alice)
    assert (await alice.get("/gallery")).status_code == 200
    later = time.time() + site.ctx.settings.web_session_hours * 3600 + 60
    site.ctx.clock = lambda: later
    assert (await alice.get("/gallery")).status_code == 303
    assert await site.db.web.sweep(later) == 1
    assert await query(site.ctx.settings.database_url, "SELECT COUNT(*) FROM web_sessions") == [(0,)]


async def test_deleting_a_reported_image_resolves_its_reports(site) -> None:
    gid = site.guild.id
    job, [rid], _ = await site.seed(site.bob, "mine to delete")
    await site.db.moderation.add_report(gid, job, site.alice.id, site.bob.id, 1.0)
    bob = await site.login(site.bob)
    token = csrf_of((await bob.get(f"/images/{rid}")).text)
    assert (await bob.post(f"/images/{rid}/delete", data={"csrf": token})).status_code == 303
    assert await site.db.web.open_reports(gid) == []
