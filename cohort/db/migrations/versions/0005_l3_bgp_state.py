"""L3 BGP state: what each amphora's speaker reports, and why a cluster is not ONLINE

``amphora_health.bgp`` holds the last BGP report of the amphora's heartbeat (sessions per
peer and the VIPs it announces, as JSON); ``amphora_cluster.status_reason`` says why a cluster
is DEGRADED or in ERROR (for example a session that never came up).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("amphora_health") as batch:
        batch.add_column(sa.Column("bgp", sa.Text(), nullable=True))
    with op.batch_alter_table("amphora_cluster") as batch:
        batch.add_column(sa.Column("status_reason", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("amphora_cluster") as batch:
        batch.drop_column("status_reason")
    with op.batch_alter_table("amphora_health") as batch:
        batch.drop_column("bgp")
