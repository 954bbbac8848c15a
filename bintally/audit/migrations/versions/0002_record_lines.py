"""The record's SKU lines: snapshot_lines, count_lines, resolution_lines, and the scorer's explanation on scores and tasks.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 09:00:00.000000

Every new column is nullable and every new table starts empty: a store of schema 0001 keeps its runs, tasks,
counts and labels as they were (totals-only snapshots, no explanation).
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('snapshot_lines',
    sa.Column('snapshot_id', sa.Integer(), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=200), nullable=False),
    sa.Column('record_qty', sa.Integer(), nullable=False),
    sa.Column('length_in', sa.Float(), nullable=True),
    sa.Column('width_in', sa.Float(), nullable=True),
    sa.Column('height_in', sa.Float(), nullable=True),
    sa.Column('weight_lb', sa.Float(), nullable=True),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], ),
    sa.PrimaryKeyConstraint('snapshot_id', 'position')
    )
    op.create_table('count_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('observation_id', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=200), nullable=False),
    sa.Column('counted_qty', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['observation_id'], ['count_observations.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('observation_id', 'sku')
    )
    with op.batch_alter_table('count_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_count_lines_observation_id'), ['observation_id'], unique=False)

    op.create_table('resolution_lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('resolution_id', sa.Integer(), nullable=False),
    sa.Column('sku', sa.String(length=200), nullable=False),
    sa.Column('record_qty', sa.Integer(), nullable=False),
    sa.Column('final_qty', sa.Integer(), nullable=False),
    sa.Column('variance', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['resolution_id'], ['resolutions.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('resolution_id', 'sku')
    )
    with op.batch_alter_table('resolution_lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_resolution_lines_resolution_id'), ['resolution_id'], unique=False)

    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.add_column(sa.Column('explanation', sa.Text(), nullable=True))
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('explanation', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('tasks', schema=None) as batch_op:
        batch_op.drop_column('explanation')
    with op.batch_alter_table('scores', schema=None) as batch_op:
        batch_op.drop_column('explanation')
    with op.batch_alter_table('resolution_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_resolution_lines_resolution_id'))

    op.drop_table('resolution_lines')
    with op.batch_alter_table('count_lines', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_count_lines_observation_id'))

    op.drop_table('count_lines')
    op.drop_table('snapshot_lines')
