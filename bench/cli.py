"""``python -m bench``: run the scenarios, print one table, write the figures as JSON.

python -m bench                      every scenario (about 8 minutes on 2 cores)
python -m bench --quick              smaller runs, a smoke test of the machinery
python -m bench --scenario load_1k   one scenario (repeatable)
python -m bench --out path.json      where to write the JSON (default bench/results.json)
python -m bench --database-url postgresql://postgres@127.0.0.1:5432/postgres
                                     run on PostgreSQL: each run gets a fresh database on that server
                                     (dropped afterwards); the default is a SQLite file per run

The deploy_* scenarios run one gateway and several workers (``python -m bot gateway`` / ``worker``);
the others run the all-in-one ``python -m bot``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.report import Figure, table, write_json
from bench.scenarios import SCENARIOS

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    parser.add_argument(
        "--scenario", action="append", choices=sorted(SCENARIOS), help="run only this scenario (repeatable)"
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="JSON output (default bench/results.json)"
    )
    parser.add_argument(
        "--database-url",
        help="a PostgreSQL server URL: every run makes (and drops) a fresh database there; default SQLite",
    )
    return parser


async def run(
    names: Sequence[str], quick: bool, database_url: str | None = None
) -> tuple[list[Figure], dict[str, Any]]:
    figures: list[Figure] = []
    details: dict[str, Any] = {}
    for name in names:
        print(f"running {name}{' (quick)' if quick else ''}...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            got, info = await SCENARIOS[name](quick, database_url=database_url)
        except Exception as exc:
            traceback.print_exc()
            got = [Figure(name, "scenario crashed", None, "", "runs", False)]
            info = {"error": repr(exc)}
        info["wall_s"] = round(time.monotonic() - started, 1)
        figures.extend(got)
        details[name] = info
    return figures, details


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    # Stopping the bot mid-upload (end of the burst) resets connections; the fakes' server logs each one.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    names = args.scenario or list(SCENARIOS)
    started = time.monotonic()
    figures, details = asyncio.run(run(names, args.quick, args.database_url))
    details["total_wall_s"] = round(time.monotonic() - started, 1)
    print(table(figures))
    write_json(args.out, figures, details, quick=args.quick)
    print(f"\n{len(figures)} figures in {details['total_wall_s']:.0f} s; written to {args.out}")
    return 0 if all(f.passed is not False for f in figures) else 1
