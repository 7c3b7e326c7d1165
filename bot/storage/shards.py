"""SQL for the gateway shards of a deployment (SQLite and PostgreSQL): shard heartbeats, identify
buckets and the once-per-deployment command sync. The logic that uses them is :mod:`bot.ops.shards`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.storage import dialect, schema

_shards = schema.gateway_shards
_buckets = schema.identify_buckets
_syncs = schema.command_syncs


@dataclass(frozen=True, slots=True)
class ShardInfo:
    shard_id: int
    shard_count: int
    worker_id: str
    host: str
    pid: int
    latency_s: float | None
    heartbeat_at: float


class SqlShardRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._dialect = engine.dialect.name

    # --- heartbeats ---

    async def beat(
        self,
        worker_id: str,
        host: str,
        pid: int,
        shard_count: int,
        latencies: Iterable[tuple[int, float | None]],
        now: float,
    ) -> None:
        """This process runs these shards now (with their latencies); shards it no longer runs go."""
        rows = [
            {
                "worker_id": worker_id,
                "shard_id": shard_id,
                "shard_count": shard_count,
                "host": host,
                "pid": pid,
                "latency_s": latency,
                "heartbeat_at": now,
            }
            for shard_id, latency in latencies
        ]
        async with self._engine.begin() as conn:
            keep = [r["shard_id"] for r in rows]
            await conn.execute(
                delete(_shards).where(_shards.c.worker_id == worker_id, _shards.c.shard_id.not_in(keep))
            )
            for row in rows:
                stmt = dialect.insert(self._dialect, _shards).values(**row)
                changes = {k: stmt.excluded[k] for k in row if k not in ("worker_id", "shard_id")}
                await conn.execute(
                    stmt.on_conflict_do_update(index_elements=["worker_id", "shard_id"], set_=changes)
                )

    async def forget(self, worker_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(delete(_shards).where(_shards.c.worker_id == worker_id))

    async def shards(self, *, fresher_than: float | None = None) -> list[ShardInfo]:
        """Every shard row (heartbeat after ``fresher_than`` only, when given), by shard id."""
        query = select(_shards).order_by(_shards.c.shard_id, _shards.c.heartbeat_at.desc())
        if fresher_than is not None:
            query = query.where(_shards.c.heartbeat_at >= fresher_than)
        async with self._engine.connect() as conn:
            return [ShardInfo(**row._mapping) for row in await conn.execute(query)]

    # --- identify ---

    async def claim_identify(self, bucket: int, holder: str, now: float, interval: float) -> float:
        """Claim ``bucket``'s next IDENTIFY: 0 when granted (nobody else in the deployment gets it for
        ``interval`` seconds), else the seconds until it may be claimed again."""
        async with self._engine.begin() as conn:
            await conn.execute(
                dialect.insert(self._dialect, _buckets)
                .values(bucket=bucket, next_at=0.0, holder=None)
                .on_conflict_do_nothing()
            )
            result = await conn.execute(
                update(_buckets)
                .where(_buckets.c.bucket == bucket, _buckets.c.next_at <= now)
                .values(next_at=now + interval, holder=holder)
            )
            if result.rowcount == 1:
                return 0.0
            next_at = await conn.scalar(select(_buckets.c.next_at).where(_buckets.c.bucket == bucket))
        return max(0.0, float(next_at or 0.0) - now)

    # --- command sync ---

    async def claim_sync(self, scope: str, digest: str, holder: str, now: float, stale_after: float) -> bool:
        """Whether this process is the one to sync ``digest`` for ``scope``: True for the first to ask
        about a new digest (or when the previous claim is older than ``stale_after``: its holder died)."""
        async with self._engine.begin() as conn:
            inserted = await conn.execute(
                dialect.insert(self._dialect, _syncs)
                .values(scope=scope, digest=digest, holder=holder, claimed_at=now)
                .on_conflict_do_nothing()
            )
            if inserted.rowcount == 1:
                return True
            result = await conn.execute(
                update(_syncs)
                .where(
                    and_(
                        _syncs.c.scope == scope,
                        or_(_syncs.c.digest != digest, _syncs.c.claimed_at < now - stale_after),
                    )
                )
                .values(digest=digest, holder=holder, claimed_at=now)
            )
            return result.rowcount == 1
