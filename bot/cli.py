"""`python -m bot`: run the bot, or use the generation pipeline from the command line.

python -m bot                      run the Discord bot (needs DISCORD_TOKEN): gateway and worker in one
python -m bot gateway              only the gateway part: answers Discord, queues jobs in the database
python -m bot worker               only the worker part: runs queued jobs, posts results (no gateway)
python -m bot sync                 push slash commands to Discord now
python -m bot generate --model M --prompt P [--aspect-ratio R] [--resolution 1K] [--count N]
                       [--seed S] [--ref FILE ...] [--out DIR]
python -m bot models               the model catalog and which routes are enabled
python -m bot doctor               check settings, database path and providers
python -m bot check-ledger         verify that every reservation is committed, refunded or open
python -m bot backup PATH          consistent online copy of the database (SQLite)
python -m bot copy-db --to URL     copy everything from DATABASE_URL into an empty database at URL
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError as SettingsValidationError

from bot.catalog import MODELS
from bot.config import Settings
from bot.errors import PaletteError
from bot.logs import setup_logging

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

NO_TOKEN_HELP = """\
Palette needs a Discord bot token to run.

  1. Open https://discord.com/developers/applications, pick (or create) your application,
     then Bot -> Reset Token, and copy the token.
  2. Put it in a file named .env next to pyproject.toml:

       DISCORD_TOKEN=your-token-here

     (.env.example lists every setting.) Also set at least one provider key, e.g. LISTENHUB_API_KEY.
  3. Run the bot again.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bot", description="Palette, the AI image bot for Discord."
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the Discord bot, gateway and worker in one process (the default)")
    sub.add_parser("gateway", help="answer Discord and queue jobs; workers (other processes) run them")
    sub.add_parser("worker", help="run queued jobs and post their results (no gateway connection)")
    sub.add_parser("sync", help="sync slash commands with Discord now")

    gen = sub.add_parser("generate", help="generate images without Discord")
    gen.add_argument("--model", required=True, help="model key, see `python -m bot models`")
    gen.add_argument("--prompt", required=True, help="what to draw")
    gen.add_argument("--aspect-ratio", help="e.g. 1:1, 16:9")
    gen.add_argument("--resolution", choices=["1K", "2K", "4K", "1k", "2k", "4k"], help="output size tier")
    gen.add_argument("--count", type=int, default=1, help="how many images (default 1)")
    gen.add_argument("--seed", type=int, help="seed, for models that support it")
    gen.add_argument(
        "--ref", action="append", default=[], metavar="FILE", help="reference image (repeatable)"
    )
    gen.add_argument("--out", default="out", metavar="DIR", help="where to write images (default ./out)")

    sub.add_parser("models", help="list models and their enabled routes")
    sub.add_parser("doctor", help="check settings, database and provider access")
    sub.add_parser("check-ledger", help="verify the usage ledger balances")
    backup = sub.add_parser("backup", help="copy the database consistently while the bot runs")
    backup.add_argument("path", help="destination file")
    copy = sub.add_parser(
        "copy-db", help="copy everything from DATABASE_URL into an empty database (e.g. SQLite -> PostgreSQL)"
    )
    copy.add_argument(
        "--to",
        required=True,
        metavar="URL",
        help="target: postgresql://user:password@host:5432/db or sqlite:///file",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = Settings()
    except SettingsValidationError as exc:
        print(f"Invalid settings:\n{_settings_errors(exc)}", file=sys.stderr)
        return EXIT_USAGE
    setup_logging(settings.log_level, settings.secrets(), settings.log_format)
    command = args.command or "run"
    try:
        if command in ("run", "sync", "gateway", "worker"):
            if settings.discord_token is None:
                print(NO_TOKEN_HELP, file=sys.stderr)
                return EXIT_USAGE
            from bot.app import run_bot

            role = {"run": "all", "sync": "all"}.get(command, command)
            return run_bot(settings, sync_only=command == "sync", role=role)
        if command == "generate":
            return asyncio.run(_generate(settings, args))
        if command == "models":
            return _models(settings)
        if command == "doctor":
            return asyncio.run(_doctor(settings))
        if command == "check-ledger":
            return asyncio.run(_check_ledger(settings))
        if command == "backup":
            return asyncio.run(_backup(settings, Path(args.path)))
        if command == "copy-db":
            return asyncio.run(_copy_db(settings, args.to))
    except KeyboardInterrupt:
        return EXIT_FAIL
    raise AssertionError(command)


def _settings_errors(exc: SettingsValidationError) -> str:
    # Only field names and pydantic's reason: never the input values (they may be secrets).
    return "\n".join(
        f"  {'.'.join(str(p) for p in err['loc']).upper()}: {err['msg']}" for err in exc.errors()
    )


async def _generate(settings: Settings, args: argparse.Namespace) -> int:
    from bot.generation import GenerationSpec, Generator, load_references
    from bot.providers import build_providers

    generator = Generator(settings, build_providers(settings))
    try:
        blobs = []
        for name in args.ref:
            path = Path(name)
            if not await asyncio.to_thread(path.is_file):
                print(f"error: reference {name} does not exist", file=sys.stderr)
                return EXIT_USAGE
            blobs.append((await asyncio.to_thread(path.read_bytes), None))
        spec = GenerationSpec(
            model=args.model,
            prompt=args.prompt,
            aspect_ratio=args.aspect_ratio,
            resolution=args.resolution,
            count=args.count,
            seed=args.seed,
        )
        generator.plan(spec)  # fail fast on options before reading/decoding the references
        references = await load_references(
            blobs, max_bytes=settings.max_reference_bytes, max_pixels=settings.max_reference_pixels
        )
        plan = generator.plan(GenerationSpec(**{**spec.__dict__, "references": references}))
        outcome = await generator.run(plan)
    except PaletteError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        await generator.aclose()
    out = Path(args.out)
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    from bot.images import extension_for

    for i, image in enumerate(outcome.images, 1):
        path = (
            out / f"{plan.model.key}-{int(outcome.latency_s * 1000)}ms-{i}.{extension_for(image.mime_type)}"
        )
        await asyncio.to_thread(path.write_bytes, image.data)
        print(f"{path}\t{image.width}x{image.height}\t{outcome.provider}")
    if outcome.failed:
        print(f"warning: {outcome.failed} image(s) failed", file=sys.stderr)
    return EXIT_OK


def _models(settings: Settings) -> int:
    enabled = settings.enabled_providers()
    rank = settings.provider_rank()
    for model in MODELS:
        offered = any(r.provider in enabled for r in model.routes)
        print(f"{model.key}{'' if offered else '  (no enabled provider)'}")
        print(f"    {model.description}")
        print(f"    ratios: {' '.join(model.aspect_ratios)}")
        print(
            f"    sizes: {' '.join(model.resolutions)}   count: {model.min_count}-{model.max_count}"
            f"   refs: up to {model.max_references}   seed: {'yes' if model.supports_seed else 'no'}"
        )
        for route in sorted(model.routes, key=lambda r: rank.get(r.provider, len(rank))):
            state = "enabled" if route.provider in enabled else "disabled (no API key)"
            print(f"    route {route.provider:<15} {route.model_id:<28} {state}")
    return EXIT_OK


async def _doctor(settings: Settings) -> int:
    from bot.providers import build_providers

    ok = True
    print(f"discord token: {'set' if settings.discord_token else 'MISSING (set DISCORD_TOKEN in .env)'}")
    ok &= settings.discord_token is not None
    if settings.database_is_sqlite:
        try:
            db_path = settings.database_path
            db_path.parent.mkdir(parents=True, exist_ok=True)
            print(f"database: {db_path} (directory writable)")
        except (OSError, ValueError) as exc:
            print(f"database: PROBLEM: {exc}")
            ok = False
    else:
        ok &= await _doctor_database(settings)
    enabled = settings.enabled_providers()
    if not enabled:
        print("providers: NONE enabled (set at least one *_API_KEY)")
        ok = False
    providers = build_providers(settings)
    try:
        for name, provider in providers.items():
            try:
                balance = await provider.balance()
            except PaletteError as exc:
                print(f"provider {name}: PROBLEM: {exc.message}")
                ok = False
                continue
            if balance is None:
                try:
                    access = await provider.check_access()
                except PaletteError as exc:
                    print(f"provider {name}: PROBLEM: {exc.message}")
                    ok = False
                    continue
                if access:
                    print(f"provider {name}: ok, key accepted (no balance endpoint is published)")
                else:
                    print(f"provider {name}: key set (this provider publishes no way to check it)")
            else:
                free = ", ".join(f"{k}={v}" for k, v in balance.free_usages.items()) or "none"
                print(f"provider {name}: ok, credits {balance.credits}, free uses: {free}")
    finally:
        for provider in providers.values():
            await provider.aclose()
        if providers:
            await next(iter(providers.values())).transport.downloader.aclose()
    return EXIT_OK if ok else EXIT_FAIL


async def _doctor_database(settings: Settings) -> bool:
    from sqlalchemy import text

    from bot.storage.engine import create_engine

    engine = create_engine(settings.database_url, pool_pre_ping=False)
    try:
        async with engine.connect() as conn:
            version = await conn.scalar(text("SHOW server_version"))
    except Exception as exc:
        print(f"database: {settings.database_url_safe}: PROBLEM: {_safe_error(exc, settings.secrets())}")
        return False
    finally:
        await engine.dispose()
    print(f"database: {settings.database_url_safe} (PostgreSQL {version}, reachable)")
    return True


def _safe_error(exc: BaseException, secrets: Sequence[str]) -> str:
    """One line about a database error, without a password in it."""
    from bot.logs import redact

    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return redact(f"{type(exc).__name__}: {first}", secrets)


async def _check_ledger(settings: Settings) -> int:
    from bot.storage import open_database

    db = await open_database(settings.database_url)
    try:
        report = await db.jobs.ledger_balance()
    finally:
        await db.close()
    print(report.describe())
    return EXIT_OK if report.balanced else EXIT_FAIL


#: Files SQLite keeps beside a database while it is open (WAL mode, or a rollback journal).
SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def overwrites_database(target: Path, database: Path) -> bool:
    """Whether writing ``target`` would replace ``database`` or one of its ``-wal``/``-shm``/``-journal``
    files, compared as resolved paths (relative paths, symlinks) and, for files that exist, as the same
    file on disk (hard links, case-insensitive file systems)."""
    resolved = target.resolve()
    # SQLite follows a symlinked database path and keeps its side files beside the real file.
    lives = [
        Path(f"{base}{side}")
        for base in dict.fromkeys([database, database.resolve()])
        for side in ("", *SQLITE_SIDE_FILES)
    ]
    for live in lives:
        if live.resolve() == resolved:
            return True
        try:
            if target.exists() and live.exists() and target.samefile(live):
                return True
        except OSError:
            continue
    return False


async def _backup(settings: Settings, path: Path) -> int:
    from bot.storage import open_database

    if not settings.database_is_sqlite:
        print(
            f"error: backup writes a SQLite file, and DATABASE_URL ({settings.database_url_safe}) is a "
            "PostgreSQL database: back it up with pg_dump (e.g. `pg_dump --format=custom "
            "--file=palette.dump DBNAME`), or copy it into a SQLite file with "
            "`python -m bot copy-db --to sqlite:///PATH`.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if await asyncio.to_thread(overwrites_database, path, settings.database_path):
        # The copy is renamed into place: over the open database (or its WAL) it would corrupt it.
        print(
            f"error: {path} is the live database {settings.database_path} (or one of its -wal/-shm "
            "files); give the backup another path.",
            file=sys.stderr,
        )
        return EXIT_USAGE
    db = await open_database(settings.database_url)
    try:
        await db.backup(path)
    finally:
        await db.close()
    print(f"backup written to {path}")
    return EXIT_OK


async def _copy_db(settings: Settings, to: str) -> int:
    """Copy DATABASE_URL into the empty database at ``to``; then check the copy's ledger."""
    from bot.storage import open_database
    from bot.storage.copy import TargetNotEmpty, copy_database
    from bot.storage.engine import DatabaseUrlError, parse_database_url, safe_url

    try:
        target_url = parse_database_url(to)
    except DatabaseUrlError as exc:
        print(f"error: --to: {exc}", file=sys.stderr)
        return EXIT_USAGE
    secrets = [*settings.secrets(), *([str(target_url.password)] if target_url.password else [])]
    shown = safe_url(target_url.set(drivername=target_url.get_backend_name()))
    try:
        source = await open_database(settings.database_url)
    except Exception as exc:
        print(
            f"error: cannot open {settings.database_url_safe}: {_safe_error(exc, secrets)}", file=sys.stderr
        )
        return EXIT_FAIL
    try:
        try:
            target = await open_database(to, max_job_reference_bytes=settings.max_job_reference_bytes)
        except Exception as exc:
            print(f"error: cannot open {shown}: {_safe_error(exc, secrets)}", file=sys.stderr)
            return EXIT_FAIL
        try:
            print(f"copying {source.url} -> {target.url}")
            report = await copy_database(
                source, target, progress=lambda table, rows: print(f"  {table}: {rows} rows")
            )
            balance = await target.jobs.ledger_balance()
        except TargetNotEmpty as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except Exception as exc:
            print(f"error: copy failed, {shown} left empty: {_safe_error(exc, secrets)}", file=sys.stderr)
            return EXIT_FAIL
        finally:
            await target.close()
    finally:
        await source.close()
    print(f"copied {report.total} rows")
    print(balance.describe())
    return EXIT_OK if balance.balanced else EXIT_FAIL


logging.getLogger(__name__).addHandler(logging.NullHandler())
