"""The fraud demo's merchant table: a SQLite file, written from the simulator's merchants, that
the runtime enriches each transaction from (its ``merchant`` field is the table's key).

::

    CREATE TABLE merchants (
        merchant_id TEXT PRIMARY KEY,  -- "m-01234", as in the transactions
        category    TEXT NOT NULL,     -- "electronics"
        country     TEXT NOT NULL,     -- "US", an ISO 3166 code
        risk        REAL NOT NULL      -- 0 (safe) to 1, as an acquirer would score it
    )
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from contextlib import closing

from .simulator import Merchant

__all__ = ["COLUMNS", "KEY", "TABLE", "write_merchants"]

#: The table, its key column and the columns a lookup reads.
TABLE = "merchants"
KEY = "merchant_id"
COLUMNS = ("category", "country", "risk")


def write_merchants(path: str | os.PathLike[str], merchants: Iterable[Merchant]) -> int:
    """Write ``merchants`` as the table ``merchants`` of the SQLite file ``path`` (created if
    need be; a table of that name already there is replaced, other tables are left alone);
    return the rows written.

    Raises:
        sqlite3.Error: the file cannot be opened or written, or is not a SQLite database.
    """
    rows = [(m.id, m.category, m.country, m.risk) for m in merchants]
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute(f"DROP TABLE IF EXISTS {TABLE}")
        connection.execute(
            f"CREATE TABLE {TABLE} ({KEY} TEXT PRIMARY KEY, category TEXT NOT NULL,"
            " country TEXT NOT NULL, risk REAL NOT NULL)"
        )
        connection.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", rows)
    return len(rows)
