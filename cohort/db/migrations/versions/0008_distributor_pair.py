"""distributor pair: each member's VRRP role, and a failed member leaves its name to its replacement

Every L2 VIP is served by two distributors (``distributor-l2-0`` and ``-1``); keepalived decides
which one holds the VIPs, and each member's heartbeat reports its role (MASTER, BACKUP, FAULT),
kept in ``distributor.role``. A failed member (ERROR) is replaced by a new row under the same
name, so the unique index on live names now leaves out ERROR rows as well as DELETED ones. The
one distributor of a type that existed before becomes member 0 of its pair.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD_LIVE = sa.text("status != 'DELETED'")
LIVE = sa.text("status NOT IN ('DELETED', 'ERROR')")


def upgrade() -> None:
    with op.batch_alter_table("distributor") as batch:
        batch.add_column(sa.Column("role", sa.String(16), nullable=True))
    op.drop_index("uq_distributor_live_name", table_name="distributor")
    op.execute("UPDATE distributor SET name = name || '-0' WHERE status NOT IN ('DELETED', 'ERROR') "
               "AND name NOT LIKE '%-0' AND name NOT LIKE '%-1'")
    op.create_index("uq_distributor_live_name", "distributor", ["name"], unique=True,
                    sqlite_where=LIVE, postgresql_where=LIVE)


def downgrade() -> None:
    op.drop_index("uq_distributor_live_name", table_name="distributor")
    op.create_index("uq_distributor_live_name", "distributor", ["name"], unique=True,
                    sqlite_where=OLD_LIVE, postgresql_where=OLD_LIVE)
    with op.batch_alter_table("distributor") as batch:
        batch.drop_column("role")
