"""Alembic environment: the store hands its connection in `config.attributes["connection"]`."""

from alembic import context

from bintally.audit.schema import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
