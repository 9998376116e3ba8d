"""A real PostgreSQL for the tests (conftest.py's ``pg_server``, ``pg_url``, ``pg_proxy``).

The classes live in ``chaos/pg.py`` and ``chaos/pg_proxy.py``, where the shared-ledger
campaign, which is no pytest run, imports them too.
"""

from __future__ import annotations

from chaos.pg import PasswordRole, PgServer, database_of
from chaos.pg_proxy import PgProxy

__all__ = ["PasswordRole", "PgProxy", "PgServer", "database_of"]
