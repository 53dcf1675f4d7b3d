"""PostgreSQL (asyncpg, imported when a connection starts).

``[postgres.NAME]`` sections configure ``PostgresDriver`` connections (a pool each);
``tables`` quotes names, reads a table's columns and converts message values to them.
"""

from mechaway.drivers.postgres.driver import PostgresDriver, PostgresSettings, is_lost, safe_dsn
from mechaway.drivers.postgres.tables import BadValue, Column, Table

__all__ = [
    "BadValue",
    "Column",
    "PostgresDriver",
    "PostgresSettings",
    "Table",
    "is_lost",
    "safe_dsn",
]
