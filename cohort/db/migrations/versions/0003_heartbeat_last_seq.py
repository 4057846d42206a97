"""heartbeat last sequence: the newest accepted heartbeat sequence per amphora and distributor

The health manager writes it with the health row it already updates on every heartbeat, and
the heartbeat verifier loads it at start, so a datagram captured before a controller restart
cannot be replayed after it.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = ("amphora_health", "distributor_health")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("last_seq", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.drop_column("last_seq")
