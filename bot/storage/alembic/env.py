"""Alembic environment for Palette's migrations (run programmatically by :mod:`bot.storage.migrator`).

The caller passes an open connection, already inside its transaction (``config.attributes["connection"]``):
the whole upgrade commits or rolls back as one, under the caller's lock. No ``alembic.ini`` is needed.
"""

from __future__ import annotations

from alembic import context

from bot.storage.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only `alembic revision` from a developer's shell
    raise RuntimeError("run Palette's migrations through bot.storage.migrator (it supplies the connection)")

context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
