"""bgp peer md5 password encrypted: the password is kept encrypted with the secrets key

It was stored in plain text. Existing passwords are encrypted (and decrypted again on
downgrade) with the key file the caller passes as the ``secrets_key_file`` attribute of the
Alembic config, the one ``cohort db upgrade`` and ``cohort up`` use; without it, a database
that holds passwords is not migrated rather than left readable.

Revision ID: 0004
Revises: 0003
"""

from pathlib import Path

import sqlalchemy as sa
from alembic import context, op

from cohort import secrets

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PEER = sa.table("bgp_peer", sa.column("id", sa.String()), sa.column("md5_password", sa.String()),
                sa.column("md5_password_ciphertext", sa.LargeBinary()))


def _key_file() -> Path:
    key_file = context.config.attributes.get("secrets_key_file")
    if key_file is None:
        raise RuntimeError("BGP peer passwords need the secrets key to be migrated: run `cohort db upgrade`.")
    return Path(key_file)


# The key is looked for before the first schema change: SQLite does not roll DDL back here.


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(PEER.c.id, PEER.c.md5_password).where(PEER.c.md5_password.is_not(None))).all()
    key_file = _key_file() if rows else None
    with op.batch_alter_table("bgp_peer") as batch:
        batch.add_column(sa.Column("md5_password_ciphertext", sa.LargeBinary(), nullable=True))
    for ident, password in rows:
        assert key_file is not None
        bind.execute(PEER.update().where(PEER.c.id == ident).values(
            md5_password_ciphertext=secrets.encrypt_text(key_file, password)))
    with op.batch_alter_table("bgp_peer") as batch:
        batch.drop_column("md5_password")


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(PEER.c.id, PEER.c.md5_password_ciphertext)
                        .where(PEER.c.md5_password_ciphertext.is_not(None))).all()
    key_file = _key_file() if rows else None
    with op.batch_alter_table("bgp_peer") as batch:
        batch.add_column(sa.Column("md5_password", sa.String(length=255), nullable=True))
    for ident, ciphertext in rows:
        assert key_file is not None
        bind.execute(PEER.update().where(PEER.c.id == ident).values(
            md5_password=secrets.decrypt_text(key_file, ciphertext)))
    with op.batch_alter_table("bgp_peer") as batch:
        batch.drop_column("md5_password_ciphertext")
