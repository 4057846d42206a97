"""The store: SQLAlchemy 2 models, sessions and Alembic migrations. It knows no wire format."""
