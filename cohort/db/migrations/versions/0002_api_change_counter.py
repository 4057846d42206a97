"""api change counter: what the API's response cache validates against

The table holds one row whose counter SQLite triggers bump, in the same transaction, on every
change to what a load balancer's body shows: a load balancer inserted, deleted or updated in
one of its shown columns, a listener or pool inserted, deleted or moved. A cached answer stamped with an older counter is never
served again (see cohort.api.response_cache). The triggers exist on SQLite only, the one
database the cache is used with; elsewhere the table stays at 0 and unused.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# The columns each table's body shows (the reconciler's bookkeeping columns are left out).
SHOWN = {
    "load_balancer": ("id", "name", "project_id", "provisioning_status", "operating_status", "admin_state_up",
                      "created_at", "updated_at", "tags", "description", "vip_address", "vip_port_id",
                      "vip_subnet_id", "vip_network_id", "vip_qos_policy_id", "vip_sg_ids", "vip_vnic_type",
                      "additional_vips", "provider", "flavor_id", "availability_zone"),
    "listener": ("id", "load_balancer_id", "created_at"),
    "pool": ("id", "load_balancer_id", "created_at"),
}
EVENTS = ("INSERT", "UPDATE", "DELETE")


def upgrade() -> None:
    table = op.create_table(
        "api_change",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("counter", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(table, [{"id": 1, "counter": 0}])
    if op.get_bind().dialect.name != "sqlite":
        return
    for name, columns in SHOWN.items():
        for event in EVENTS:
            what = f"UPDATE OF {', '.join(columns)}" if event == "UPDATE" else event
            op.execute(f"CREATE TRIGGER api_change_{name}_{event.lower()} AFTER {what} ON {name} "
                       "BEGIN UPDATE api_change SET counter = counter + 1 WHERE id = 1; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for name in SHOWN:
            for event in EVENTS:
                op.execute(f"DROP TRIGGER IF EXISTS api_change_{name}_{event.lower()}")
    op.drop_table("api_change")
