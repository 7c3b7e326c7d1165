"""The benchmark's fakes in processes of their own, so that what they measure is the bot, not the bench.

``python -m bench.fakeproc discord --info FILE --users N`` runs :class:`~bench.fakes.BenchDiscord` (one
guild, ``N`` members) and ``python -m bench.fakeproc listenhub --info FILE --latency S --prepare 1K`` runs
:class:`~bench.fakes.BenchListenHub`. Each writes, once listening, a JSON file naming its URLs and the
port of a small control API (loopback HTTP), and runs until SIGTERM.

Every time is taken inside the fake's process on ``time.monotonic`` (one clock for every process of a
Linux machine): an interaction's ``created_at`` when the fake dispatched INTERACTION_CREATE, ``acked_at``
when its callback arrived, ``done_at`` when its final message with a file arrived. The benchmark's own
event loop (which only drives and polls) cannot delay them.

Control API of the Discord fake: ``GET /ready`` (the bot registered ``/imagine``), ``POST /imagine`` with
``{"commands": [[user_index, prompt, options], ...]}`` (dispatched in order, yielding every 25 like the
in-process driver; answers ``[[id, created_at], ...]``) and ``GET /state`` (every interaction's times,
which failed, which results came as channel messages, the fake's own loop monitor; with ``?progress=1``
only how many were acknowledged and how many finished). The provider's: ``GET /state`` (calls, most in
flight, PNG sizes, its loop monitor).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from bench.fakes import BenchDiscord, BenchListenHub
from bot.loopmonitor import LoopMonitor


def _loop(monitor: LoopMonitor) -> dict[str, Any]:
    return {
        "max_stall_s": monitor.max_stall,
        "stalls_over_50ms": monitor.stalls_over_50ms,
        "max_gc_pause_s": monitor.max_gc_pause,
    }


def _failed(ix: Any) -> bool:
    original = ix.original
    failed = original is not None and not original.loading and (original.content or "").startswith("❌")
    return failed or bool(ix.followups)  # errors after the deferral come as (ephemeral) followups


async def _serve_control(app: web.Application) -> int:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return int(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]


async def run_discord(users: int, monitor: LoopMonitor) -> dict[str, Any]:
    fake = BenchDiscord()
    await fake.start()
    guild = fake.add_guild(name="Bench")
    channel = guild.channels[0]
    people = []
    for i in range(users):
        user = fake.add_user(f"user{i}")
        fake.add_member(guild, user)
        people.append(user)

    async def ready(request: web.Request) -> web.Response:
        timeout = float(request.query.get("timeout", "30"))
        await fake.wait_for_state(lambda: fake.find_command("imagine"), timeout, "commands")
        return web.json_response({"ok": True})

    async def imagine(request: web.Request) -> web.Response:
        sent = []
        for n, (user, prompt, options) in enumerate((await request.json())["commands"], 1):
            ix = await fake.invoke_slash(
                people[user], channel, "imagine", options={"prompt": prompt, **options}
            )
            fake.by_prompt[prompt] = ix.id
            sent.append([ix.id, ix.created_at])
            if n % 25 == 0:
                await asyncio.sleep(0)  # let the gateway writer flush
        return web.json_response(sent)

    async def state(request: web.Request) -> web.Response:
        if request.query.get("progress"):  # cheap, for polling: how many were answered, how many finished
            now = time.monotonic()  # an interaction not acknowledged within 3 s never will be
            lost = {
                i
                for i, ix in fake.interactions.items()
                if ix.acked_at is None and (ix.ack_expired or now - ix.created_at > 3.5)
            }
            acked = sum(1 for ix in fake.interactions.values() if ix.acked_at is not None)
            failed = {i for i, ix in fake.interactions.items() if _failed(ix)}
            finished = len(failed | lost | set(fake.done_at))
            return web.json_response({"finished": finished, "acked": acked + len(lost)})
        return web.json_response(
            {
                "interactions": {str(i): [ix.created_at, ix.acked_at] for i, ix in fake.interactions.items()},
                "done_at": {str(i): t for i, t in fake.done_at.items()},
                "delivered": {str(i): files for i, files in fake.delivered.items()},
                "failed": [i for i, ix in fake.interactions.items() if _failed(ix)],
                "in_channel": sorted(fake.in_channel),
                "upload_limit": fake.upload_limit,
                "loop": _loop(monitor),
            }
        )

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.add_routes([web.get("/ready", ready), web.post("/imagine", imagine), web.get("/state", state)])
    port = await _serve_control(app)
    return {
        "control": f"http://127.0.0.1:{port}",
        "bot_token": fake.bot_token,
        "api_base": fake.api_base,
        "gateway_url": fake.gateway_url,
    }


async def run_listenhub(latency: float, prepare: list[str], monitor: LoopMonitor) -> dict[str, Any]:
    fake = BenchListenHub(latency=latency)
    for size in prepare:
        await asyncio.to_thread(fake.prepare, size)
    await fake.__aenter__()

    async def state(_request: web.Request) -> web.Response:
        return web.json_response(
            {
                "max_in_flight": fake.max_in_flight,
                "calls": dict(fake.calls),
                "busy_s": fake.busy_s,
                "span_s": (fake.last_end_at or 0.0) - (fake.first_call_at or 0.0),
                "png_sizes": {f"{w}x{h}": size for (w, h), size in fake.png_sizes.items()},
                "loop": _loop(monitor),
            }
        )

    app = web.Application()
    app.add_routes([web.get("/state", state)])
    port = await _serve_control(app)
    return {"control": f"http://127.0.0.1:{port}", "api_key": fake.api_key, "base_url": fake.base_url}


def _write_info(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)  # the bench waits for this file: written whole or not at all


async def main_async(args: argparse.Namespace) -> None:
    # A measuring instrument: the cyclic collector's full passes over everything the fake keeps (every
    # interaction and message) stalled its loop 130 ms and delayed the times it takes. Reference counting
    # still frees almost everything; the cyclic rest lives until the run ends, which is short.
    gc.disable()
    monitor = LoopMonitor(Path(args.info).with_suffix(".loop.json"))
    monitor.start()
    if args.kind == "discord":
        info = await run_discord(args.users, monitor)
    else:
        info = await run_listenhub(args.latency, args.prepare or [], monitor)
    await asyncio.to_thread(_write_info, Path(args.info), info)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> None:
    import logging

    parser = argparse.ArgumentParser(prog="python -m bench.fakeproc", description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=("discord", "listenhub"))
    parser.add_argument("--info", required=True, help="where to write the URLs (JSON) once listening")
    parser.add_argument("--users", type=int, default=10)
    parser.add_argument("--latency", type=float, default=1.0)
    parser.add_argument("--prepare", action="append")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
