"""one live distributor per name: two controllers building the shared distributor at once make one

The controller creates the shared distributor of a type on first use; with several controllers
on one database, two could each insert one. A unique index on the name of live distributors
makes the second insert fail, and that controller uses the first one's row.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

LIVE = sa.text("status != 'DELETED'")


def upgrade() -> None:
    op.create_index("uq_distributor_live_name", "distributor", ["name"], unique=True,
                    sqlite_where=LIVE, postgresql_where=LIVE)


def downgrade() -> None:
    op.drop_index("uq_distributor_live_name", table_name="distributor")
