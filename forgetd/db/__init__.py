"""Database layer: SQLAlchemy 2 models, engines, the session scope and named queries."""
