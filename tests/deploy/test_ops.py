"""/metrics, /healthz and /readyz of real processes (``python -m bot gateway|worker``) read over HTTP."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import POSTGRES_ADMIN_URL
from tests.deploy.conftest import LISTENHUB_MODEL, deployment, final
from tests.deploy.ops import http_get, ops_port, value, wait_metric, wait_status

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_counters_queue_depth_and_readiness_of_a_gateway_and_a_worker(
    tmp_path: Path, database_url: str
) -> None:
    async with deployment(tmp_path, database_url, users=2) as d:
        # The gateway's IDENTIFY is held: the process is up (healthz) but not ready (readyz 503).
        d.fake.gateway.identify_gate.clear()
        gateway = d.process("gateway", METRICS_PORT=0, USER_MAX_CONCURRENT=2)
        await gateway.start(wait=False)
        gport = await ops_port(gateway)
        assert await http_get(gport, "/healthz") == (200, "ok\n")
        status, reason = await http_get(gport, "/readyz")
        assert status == 503 and "gateway" in reason, reason
        d.fake.gateway.identify_gate.set()
        await gateway.wait_ready(60, ready=lambda: d.fake.find_command("imagine") is not None)
        assert "ready" in await wait_status(gport, "/readyz", 200)

        # One provider slot: one job runs, the others wait in the queue.
        worker = d.process("worker", METRICS_PORT=0, LISTENHUB_CONCURRENCY=1)
        await worker.start()
        wport = await ops_port(worker)
        await wait_status(wport, "/readyz", 200)
        d.listenhub.hold()
        first, second = d.users
        jobs = [
            await d.imagine(first, "alpha prompt", model=LISTENHUB_MODEL),
            await d.imagine(first, "beta prompt", model=LISTENHUB_MODEL),
            await d.imagine(second, "gamma prompt", model=LISTENHUB_MODEL),
        ]
        refused = await d.imagine(first, "delta prompt", model=LISTENHUB_MODEL)  # over USER_MAX_CONCURRENT
        text = await d.reply(refused)
        assert "in progress" in text, text
        await d.listenhub.wait_for(lambda: d.listenhub.held == 1, timeout=30)
        await d.wait_db("SELECT COUNT(*) FROM jobs WHERE status = 'queued'", lambda n: n == 2)

        # The queue depth is the deployment's (the database's), the same from either process.
        page = await wait_metric(gport, "palette_queue_depth", lambda v: v == 2, role="gateway")
        assert value(page, "palette_jobs_total", role="gateway", outcome="refused") == 1
        assert value(page, "palette_interaction_ack_seconds_count", role="gateway") >= 4
        page = await wait_metric(wport, "palette_queue_depth", lambda v: v == 2, role="worker")
        assert value(page, "palette_jobs_running", role="worker", provider="listenhub") == 1
        assert value(page, "palette_jobs_total", role="worker", outcome="delivered") == 0

        d.listenhub.release_all()
        for ix in jobs:
            await ix.wait_for(final, timeout=60)
            assert ix.original.files
        page = await wait_metric(
            wport, "palette_jobs_total", lambda v: v == 3, role="worker", outcome="delivered"
        )
        assert value(page, "palette_images_delivered_total", role="worker", model=LISTENHUB_MODEL) == 3
        assert value(page, "palette_job_duration_seconds_count", role="worker") == 3
        assert (
            value(page, "palette_provider_requests_total", role="worker", provider="listenhub", outcome="ok")
            >= 3
        )
        assert value(page, "palette_provider_latency_seconds_count", role="worker", provider="listenhub") >= 3
        assert value(page, "palette_provider_breaker_open", role="worker", provider="listenhub") == 0
        # (A job counts as delivered a moment before its task ends.)
        await wait_metric(
            wport, "palette_jobs_running", lambda v: v == 0, role="worker", provider="listenhub"
        )
        assert value(page, "palette_jobs_total", role="worker", outcome="failed") == 0
        assert value(page, "palette_discord_rest_429_total", role="worker") == 0
        await wait_metric(wport, "palette_queue_depth", lambda v: v == 0, role="worker")
        gateway_page = await wait_metric(
            gport,
            "palette_gateway_latency_seconds",
            lambda v: v is not None and v >= 0,
            role="gateway",
            shard="0",
        )

        # Nothing about users, prompts or secrets in any label or value.
        secrets = [d.fake.bot_token, d.listenhub.api_key, d.mountsea.key]
        people = [str(u.id) for u in d.users]
        for text in (page, gateway_page):
            for needle in ["alpha", "beta", "gamma", "delta", *secrets, *people]:
                assert needle not in text
        await d.check_ledger()
        d.assert_clean_logs()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_readyz_is_503_once_the_database_is_gone(tmp_path: Path, database_url: str) -> None:
    async with deployment(tmp_path, database_url, users=1) as d:
        gateway = d.process("gateway", METRICS_PORT=0)
        worker = d.process("worker", METRICS_PORT=0)
        await d.start_gateway(gateway)
        await worker.start()
        ports = [await ops_port(gateway), await ops_port(worker)]
        for port in ports:
            await wait_status(port, "/readyz", 200)
        # The database goes away: every connection terminated and the database dropped.
        admin = await asyncpg.connect(POSTGRES_ADMIN_URL)
        try:
            await admin.execute(f'DROP DATABASE "{database_url.rsplit("/", 1)[1]}" WITH (FORCE)')
        finally:
            await admin.close()
        for port in ports:
            reason = await wait_status(port, "/readyz", 503)
            assert reason.startswith("database:"), reason
            assert await http_get(port, "/healthz") == (200, "ok\n")  # alive, just not ready


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_json_logs_of_real_processes_carry_job_context_and_no_token(
    tmp_path: Path, database_url: str
) -> None:
    async with deployment(tmp_path, database_url, users=1, LOG_FORMAT="json", LOG_LEVEL="DEBUG") as d:
        gateway, (worker,) = await asyncio.gather(d.gateway(), d.workers(1))
        ix = await d.imagine(d.users[0], "a json prompt", model=LISTENHUB_MODEL)
        await ix.wait_for(final, timeout=60)
        assert ix.original.files
        job_id = await d.scalar("SELECT id FROM jobs")
        await gateway.stop()
        await worker.stop()
        entries = {}
        for proc in (gateway, worker):
            text = proc.log_text()
            assert ix.token not in text, f"an interaction token is in {proc.name}'s log"
            # Every line but the test harness's start marker is one JSON object.
            entries[proc.name] = [
                json.loads(line) for line in text.splitlines() if not line.startswith("===")
            ]
            for entry in entries[proc.name]:
                assert {"timestamp", "level", "logger", "message"} <= entry.keys()
        job_lines = [e for e in entries["worker-1"] if e.get("job_id") == job_id]
        assert job_lines and all(e["user_id"] == d.users[0].id for e in job_lines)
        assert any(e.get("provider") == "listenhub" for e in job_lines)
        # The gateway's lines written while it ran the command name its user and server.
        command_lines = [e for e in entries["gateway"] if e.get("user_id") == d.users[0].id]
        assert command_lines and all(e["guild_id"] == d.guild.id for e in command_lines)
        # discord.py's DEBUG lines name interaction webhook URLs: their token is redacted.
        everything = json.dumps(entries)
        assert f"/webhooks/{d.fake.application_id}/[redacted]" in everything
        d.assert_clean_logs()
