"""distributor probes: what each distributor's probes last reported of the amphorae, and since when

``distributor_health.probes`` holds, per VIP and amphora, since when the distributor's heartbeats
have reported the amphora down (null while it is up), as JSON. The failover watcher replaces an L2
amphora that every live distributor has found down for ``frontend_unreachable_after`` seconds: its
front-end link is down while it still heartbeats over management.

Revision ID: 0009
Revises: 0008
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("distributor_health") as batch:
        batch.add_column(sa.Column("probes", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("distributor_health") as batch:
        batch.drop_column("probes")
