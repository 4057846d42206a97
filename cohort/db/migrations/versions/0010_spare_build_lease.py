"""spare build lease: the controller building a spare amphora, and until when

``amphora.lease_owner`` and ``amphora.lease_expires`` are set while a spare is built and renewed
every third of ``reconcile_lease`` by its builder; a spare still building whose lease lapsed was
left by a controller that died, and is destroyed and built again (before: after 180 s).

Revision ID: 0010
Revises: 0009
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("amphora") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_expires", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("amphora") as batch:
        batch.drop_column("lease_expires")
        batch.drop_column("lease_owner")
