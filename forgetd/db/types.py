"""Column types that behave the same on SQLite and PostgreSQL."""

from __future__ import annotations

import math
from datetime import datetime, timezone

from sqlalchemy import DateTime, Float
from sqlalchemy.types import TypeDecorator


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python on both databases.

    SQLite has no timezone type and hands back naive datetimes; comparing those with aware ones
    raises, so everything is normalised to aware UTC at the boundary.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(timezone.utc)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Real(TypeDecorator):
    """A float that keeps NaN on both databases.

    A check that cannot be computed (a ratio over a zero loss, a metric the evaluation lacks) is recorded as
    NaN and fails (forgetd.verify.checks). PostgreSQL stores NaN; SQLite turns it into NULL, so a NOT NULL
    column refused the row and the evaluate job crashed instead of failing the check. On SQLite NaN is
    written as the text 'NaN', which a REAL column keeps as text (it is not a numeric literal), and read
    back as NaN; infinities are REAL values there already."""

    impl = Float
    cache_ok = True

    def bind_processor(self, dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        # instead of Float's own processor, which would turn the text back into a float
        def process(value):
            if isinstance(value, float) and math.isnan(value):
                return "NaN"
            return None if value is None else float(value)

        return process

    def process_result_value(self, value, dialect):
        if isinstance(value, str):
            return float(value)
        return value
