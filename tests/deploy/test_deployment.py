"""Palette as several real processes: gateways and workers against one database (SQLite and PostgreSQL).

Every process is ``python -m bot gateway`` or ``python -m bot worker``; the loopback fake Discord and
the fake providers run in the test. Waits are events and polls with generous timeouts, never timing
thresholds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from tests.deploy.conftest import LISTENHUB_MODEL, MOUNTSEA_MODEL, Deployment, deployment, final
from tests.fakes.providers.listenhub import FakeListenHub
from tests.fakes.providers.mountsea import FakeMountsea

pytestmark = pytest.mark.timeout(120)


async def settle_duplicates(d: Deployment) -> None:
    """Give any second delivery of a finished job the time to show itself (then the checks count it)."""
    await asyncio.sleep(0.5)


def assert_delivered_once(d: Deployment, interactions: list) -> None:
    delivered = [ix for ix in interactions if ix.original is not None and ix.original.files]
    assert len(delivered) == len(interactions), [ix.original for ix in interactions]
    # Exactly once: each delivered job has one result message in the channel, and nothing else has one.
    results = d.results()
    assert len(results) == len(delivered), [m.content for m in results]
    assert len({m.id for m in results}) == len(results)


async def test_one_gateway_two_workers_deliver_every_result_once(tmp_path: Path, database_url: str) -> None:
    async with (
        deployment(tmp_path, database_url, users=4, WORKER_MAX_JOBS=5) as d,
        FakeListenHub() as second_lh,
        FakeListenHub() as tripwire_lh,
        FakeMountsea() as tripwire_ms,
    ):
        # Every process starts at once on the empty database, as `docker compose up` starts them. The
        # gateway never calls a provider: its provider URLs lead to fakes that must stay untouched. Each
        # worker has its own ListenHub (the same API) so the test can see who ran what.
        await asyncio.gather(
            d.gateway(LISTENHUB_BASE_URL=tripwire_lh.base_url, MOUNTSEA_BASE_URL=tripwire_ms.base_url),
            d.process("worker", "worker-1").start(),
            d.process("worker", "worker-2", LISTENHUB_BASE_URL=second_lh.base_url).start(),
        )
        for lh in (d.listenhub, second_lh):
            lh.hold()
        d.mountsea.hold_tasks = True
        interactions = []
        for i in range(10):
            model = MOUNTSEA_MODEL if i % 5 == 4 else LISTENHUB_MODEL
            interactions.append(await d.imagine(d.users[i % 4], f"job {i}", model=model))
        # All ten run at once, at most five per worker: both workers have work.
        await d.wait_db("SELECT COUNT(*) FROM jobs WHERE status = 'running'", lambda n: n == 10)
        # Polled: each fake wakes its own waiters only, and either worker's calls may arrive last.
        async with asyncio.timeout(30):
            while d.listenhub.held + second_lh.held != 8:  # noqa: ASYNC110 - two fakes, no one event
                await asyncio.sleep(0.02)
        assert d.listenhub.held >= 3 and second_lh.held >= 3
        for lh in (d.listenhub, second_lh):
            lh.release_all()
        d.mountsea.hold_tasks = False
        await d.all_final(interactions)
        await settle_duplicates(d)

        assert_delivered_once(d, interactions)
        assert d.listenhub.calls["generate"] + second_lh.calls["generate"] == 8
        assert d.mountsea.submit_calls == 2
        assert tripwire_lh.calls == {"generate": 0, "subscription": 0}
        assert tripwire_ms.submit_calls == 0 and not tripwire_ms.polls
        await d.check_ledger()
        d.assert_clean_logs()


async def test_sigkill_a_worker_with_jobs_in_flight(tmp_path: Path, database_url: str) -> None:
    async with deployment(tmp_path, database_url, users=3) as d:
        d.listenhub.hold()  # synchronous calls stay in flight until released
        d.mountsea.hold_tasks = True  # tasks stay "processing" until released
        _, (doomed,) = await asyncio.gather(d.gateway(), d.workers(1))
        interactions = []
        for i in range(6):
            model = LISTENHUB_MODEL if i % 2 == 0 else MOUNTSEA_MODEL
            interactions.append(await d.imagine(d.users[i % 3], f"before {i}", model=model))
        # Every job is in flight at the doomed worker: 3 calls held at ListenHub, 3 task ids stored.
        await d.listenhub.wait_for(lambda: d.listenhub.held == 3, timeout=30)
        await d.wait_db("SELECT COUNT(*) FROM jobs WHERE task_id IS NOT NULL", lambda n: n == 3)
        assert len(d.mountsea.tasks) == 3
        assert not [ix for ix in interactions if final(ix)]
        survivor = await d.process("worker", "worker-2").start()
        await doomed.kill()
        d.listenhub.release_all()
        d.mountsea.hold_tasks = False
        # New work keeps flowing while the dead worker's jobs wait for their leases to run out.
        for i in range(2):
            model = LISTENHUB_MODEL if i % 2 == 0 else MOUNTSEA_MODEL
            interactions.append(await d.imagine(d.users[i % 3], f"after {i}", model=model))
        await d.all_final(interactions, timeout=60)
        await settle_duplicates(d)

        assert_delivered_once(d, interactions)
        # The calls in flight at the dead worker ran again at the survivor (charged once: check-ledger).
        runs = Counter(d.listenhub.started_prompts)
        assert [runs[f"before {i}"] for i in (0, 2, 4)] == [2, 2, 2] and runs["after 0"] == 1, runs
        # Mountsea tasks were resumed by polling their stored ids: no prompt was ever submitted twice.
        assert d.mountsea.submit_calls == 4
        assert sorted(d.mountsea.submitted_prompts) == sorted(set(d.mountsea.submitted_prompts))
        # The dead worker's jobs were taken over by the survivor, none is left running.
        assert await d.scalar("SELECT COUNT(*) FROM jobs WHERE status IN ('queued', 'running')") == 0
        await d.check_ledger()
        assert survivor.running
        d.assert_clean_logs()


# What this one proves is about Discord (deliveries need no gateway, buttons work after it is back), not
# about the database: SQLite only, to keep the folder quick.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_gateway_killed_while_workers_deliver_then_back(tmp_path: Path, database_url: str) -> None:
    async with deployment(tmp_path, database_url, users=3) as d:
        d.listenhub.hold()
        gateway, _ = await asyncio.gather(d.gateway(), d.workers(2))
        interactions = [await d.imagine(d.users[i % 3], f"job {i}") for i in range(6)]
        await d.listenhub.wait_for(lambda: d.listenhub.held == 6, timeout=30)
        # Every command was answered in full (the gateway handed each job's interaction to the workers).
        await d.wait_db("SELECT COUNT(*) FROM jobs WHERE interaction_token IS NOT NULL", lambda n: n == 6)
        await gateway.kill()
        d.listenhub.release_all()
        # With no gateway running, the workers still post every result (interaction webhooks, REST).
        await d.all_final(interactions)
        assert_delivered_once(d, interactions)

        await d.start_gateway(gateway)
        result = interactions[0].original
        reroll = await d.fake.click_button(d.users[0], result, d.button(result, "reroll"))
        again = await reroll.wait_for_message(lambda m: bool(m.files), timeout=30)
        assert again.id != result.id
        await settle_duplicates(d)
        assert len(d.results()) == 7
        await d.check_ledger()
        d.assert_clean_logs()


async def test_caps_and_round_robin_hold_across_three_workers(tmp_path: Path, database_url: str) -> None:
    # One job per worker at a time: the two ListenHub slots can only be held by two different workers.
    settings = {"LISTENHUB_CONCURRENCY": 2, "WORKER_MAX_JOBS": 1}
    async with deployment(tmp_path, database_url, users=4, **settings) as d:
        lh, queued_jobs = d.listenhub, "SELECT COUNT(*) FROM jobs WHERE status = 'queued'"
        lh.hold()
        d.mountsea.hold_tasks = True
        await asyncio.gather(d.gateway(), d.workers(3))
        warmup, *people = d.users
        first = [await d.imagine(warmup, f"{warmup.username} {i}") for i in range(2)]
        await lh.wait_for(lambda: lh.held == 2, timeout=30)
        # A, B and C queue four jobs each, in that order (the worst order for first come, first served),
        # one at a time so the database has them in the order they were sent. The third worker is idle
        # and woken by each new job: it must not start a third call.
        queued = []
        for user in people:
            for i in range(4):
                queued.append(await d.imagine(user, f"{user.username} {i}"))
                await d.wait_db(queued_jobs, lambda n: n == len(queued))
        assert lh.in_flight == 2 and len(lh.started_prompts) == 2
        # The idle worker takes a Mountsea job instead (that provider has room) and keeps it busy, so from
        # now on the only worker free to claim is the one whose ListenHub call just ended: no two workers
        # race for a slot, and the order of starts is the order the queue hands jobs out.
        task = await d.imagine(warmup, "a task", model=MOUNTSEA_MODEL)
        await d.wait_db("SELECT COUNT(*) FROM jobs WHERE status = 'running'", lambda n: n == 3)
        # Let one call finish at a time: exactly one slot frees, so exactly one job starts next.
        for n in range(3, 15):
            lh.release(1)
            await lh.wait_for(lambda n=n: len(lh.started_prompts) == n, timeout=30)
            assert lh.in_flight <= 2
        lh.release_all()
        d.mountsea.hold_tasks = False
        await d.all_final([*first, *queued, task])

        order = [prompt.split()[0] for prompt in lh.started_prompts[2:]]
        names = [user.username for user in people]
        assert lh.max_in_flight == 2  # the cap, counted over all three workers
        rows = await d.query("SELECT id, prompt, created_at, started_at FROM jobs ORDER BY started_at")
        assert order == names * 4, " ".join(order) + "\n" + "\n".join(map(str, rows))
        await d.check_ledger()
        d.assert_clean_logs()


async def test_a_ban_on_one_gateway_applies_on_another_within_a_second(
    tmp_path: Path, database_url: str
) -> None:
    async with deployment(tmp_path, database_url, users=2) as d:
        await asyncio.gather(d.gateway("gateway-a"), d.workers(1))
        await d.gateway("gateway-b")  # after A, so the test knows which gateway session is whose
        a, b = d.sessions["gateway-a"], d.sessions["gateway-b"]
        owner = d.fake.users[d.guild.owner_id]
        victim = d.users[0]
        # Gateway B has looked at the victim's standing already (its cache is warm).
        warm = await d.imagine(victim, "before the ban", via=b)
        await warm.wait_for(final, timeout=30)
        assert warm.original.files

        ban = await d.admin(owner, "ban", user=victim, reason="spam", via=a)
        assert "can't generate" in await d.reply(ban)
        await asyncio.sleep(1.0)  # the promise: a change applies everywhere within a second
        refused = await d.imagine(victim, "after the ban", via=b)
        text = await d.reply(refused)
        assert "banned" in text and refused.ephemeral, text
        calls = d.listenhub.calls["generate"]

        unban = await d.admin(owner, "unban", user=victim, via=a)
        assert "may generate again" in await d.reply(unban)
        await asyncio.sleep(1.0)
        allowed = await d.imagine(victim, "after the unban", via=b)
        await allowed.wait_for(final, timeout=30)
        assert allowed.original.files
        assert calls == 1 and d.listenhub.calls["generate"] == 2  # the refused command cost nothing
        await d.check_ledger()
        d.assert_clean_logs()
