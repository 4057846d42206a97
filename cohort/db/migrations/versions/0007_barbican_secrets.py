"""Barbican-compatible secrets: secret metadata, certificate containers and ACLs

A secret keeps Barbican's metadata (secret type, payload content type, algorithm, bit length,
mode, expiration, creator) and its payload as stored; the secrets stored before this revision
hold PEM, so their content type is text/plain. Containers group secrets under names, and an
ACL says which users may read one secret or container besides its project.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("secret") as batch:
        batch.add_column(sa.Column("updated_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("secret_type", sa.String(80), nullable=False, server_default="opaque"))
        batch.add_column(sa.Column("content_type", sa.String(64), nullable=True))
        batch.add_column(sa.Column("algorithm", sa.String(255), nullable=True))
        batch.add_column(sa.Column("bit_length", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("mode", sa.String(255), nullable=True))
        batch.add_column(sa.Column("expiration", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("creator_id", sa.String(255), nullable=True))
    op.execute("UPDATE secret SET content_type = 'text/plain'")
    op.create_table(
        "secret_container",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("creator_id", sa.String(255), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_secret_container")),
    )
    with op.batch_alter_table("secret_container") as batch:
        batch.create_index(batch.f("ix_secret_container_project_id"), ["project_id"], unique=False)
    op.create_table(
        "container_secret",
        sa.Column("container_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("secret_id", sa.String(36), nullable=False),
        sa.ForeignKeyConstraint(["container_id"], ["secret_container.id"], ondelete="CASCADE",
                                name=op.f("fk_container_secret_container_id_secret_container")),
        sa.ForeignKeyConstraint(["secret_id"], ["secret.id"], name=op.f("fk_container_secret_secret_id_secret")),
        sa.PrimaryKeyConstraint("container_id", "name", name=op.f("pk_container_secret")),
    )
    with op.batch_alter_table("container_secret") as batch:
        batch.create_index(batch.f("ix_container_secret_secret_id"), ["secret_id"], unique=False)
    op.create_table(
        "secret_acl",
        sa.Column("entity_id", sa.String(36), nullable=False),
        sa.Column("operation", sa.String(16), nullable=False),
        sa.Column("entity_type", sa.String(16), nullable=False),
        sa.Column("project_access", sa.Boolean(), nullable=False),
        sa.Column("users", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=True),
        sa.PrimaryKeyConstraint("entity_id", "operation", name=op.f("pk_secret_acl")),
    )


def downgrade() -> None:
    op.drop_table("secret_acl")
    with op.batch_alter_table("container_secret") as batch:
        batch.drop_index(batch.f("ix_container_secret_secret_id"))
    op.drop_table("container_secret")
    with op.batch_alter_table("secret_container") as batch:
        batch.drop_index(batch.f("ix_secret_container_project_id"))
    op.drop_table("secret_container")
    with op.batch_alter_table("secret") as batch:
        for column in ("creator_id", "expiration", "mode", "bit_length", "algorithm", "content_type", "secret_type",
                       "updated_at"):
            batch.drop_column(column)
