"""Opening a sweep's Optuna storage so that many processes on many machines may start at once on a fresh database.

`optuna.storages.RDBStorage(url)` creates its tables (`metadata.create_all`), inserts the version row and stamps
alembic, and `optuna.create_study(load_if_exists=True)` inserts the study: none of this is atomic. Two processes
doing it at the same moment on an empty PostgreSQL database collide in the catalog (`IntegrityError: duplicate key
value violates unique constraint "pg_type_typname_nsp_index"`: CREATE TABLE checks for the table, then both insert
its row type). So on PostgreSQL that whole step runs under one advisory lock, held on a connection of its own;
elsewhere (SQLite, MySQL: no advisory lock we can count on) the step is retried after a short random pause, since
a second attempt finds the tables the winner made. Once created, the storage needs neither.
"""

from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import optuna
import sqlalchemy
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock

from nanolab.errors import NanolabError

HEARTBEAT_INTERVAL, GRACE_PERIOD = 60, 180  # seconds, RDB storages only
# any 64-bit number, the same in every nanolab process: advisory locks are per database, so one key serializes
# the setup of one database and nothing else
LOCK_KEY = 0x6E616E6F_6C616231  # "nanolab1"
LOCK_TIMEOUT = "120s"  # a holder that hangs (not one that dies: its lock goes with its connection) fails the others
ATTEMPTS = 5  # without a lock: tries of the whole setup step, each after a random pause of up to 0.2 * attempt s
# heartbeats and their retry callback are "experimental" in Optuna 5, and stable enough for us
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

T = TypeVar("T")


def is_journal(url: str) -> bool:
    """A plain path is a JournalStorage file; anything with a scheme is an SQLAlchemy URL."""
    return "://" not in url


def safe(url: str) -> str:
    """A storage URL fit to print: the password masked."""
    return re.sub(r"://([^:/@]*):[^@/]*@", r"://\1:***@", url)


def open_storage(url: str) -> optuna.storages.BaseStorage:
    """The storage at `url`, its tables created if absent; safe to call from many processes at once."""
    if is_journal(url):
        return _journal(url)
    return _setup(url, lambda: _rdb(url))


def create_or_load_study(storage_url: str, name: str, directions: list[str], **kwargs) -> optuna.Study:
    """`optuna.create_study(load_if_exists=True)` made safe to race: the storage's tables and the study are made
    in one step under the lock (or retried). `kwargs` (sampler, pruner) go to `create_study`."""

    def create() -> optuna.Study:
        storage = _journal(storage_url) if is_journal(storage_url) else _rdb(storage_url)
        return optuna.create_study(storage=storage, study_name=name, directions=directions, load_if_exists=True,
                                   **kwargs)

    if is_journal(storage_url):  # the journal file's lock already serializes every write, creation included
        return create()
    return _setup(storage_url, create)


def _journal(url: str) -> JournalStorage:
    Path(url).parent.mkdir(parents=True, exist_ok=True)
    return JournalStorage(JournalFileBackend(url, lock_obj=JournalFileOpenLock(url)))


def _rdb(url: str) -> RDBStorage:
    return RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                      heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))


def _setup(url: str, step: Callable[[], T]) -> T:
    """Run `step` (which creates tables, maybe a study) alone on PostgreSQL, or with retries elsewhere; a failure
    to open (bad URL, missing driver, server down) becomes one NanolabError line naming the masked URL."""
    try:
        if sqlalchemy.engine.make_url(url).get_backend_name() == "postgresql":
            with _advisory_lock(url):
                return step()
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return step()
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
                # the other process's half-made tables/rows; a server that is down fails the same way, ATTEMPTS times
                if attempt == ATTEMPTS:
                    raise
                time.sleep(random.uniform(0, 0.2 * attempt))
        raise AssertionError("unreachable")
    except NanolabError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise NanolabError(f"storage {safe(url)}: cannot open it ({type(exc).__name__}: {first})") from None


@contextmanager
def _advisory_lock(url: str) -> Iterator[None]:
    """Hold PostgreSQL's session-level advisory lock LOCK_KEY on a connection of our own (not one of the storage's
    pool, which Optuna commits and recycles). Autocommit, so the waiting connection holds no transaction open;
    the lock is released explicitly, and by the server if this process dies."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(sqlalchemy.text(f"SET lock_timeout = '{LOCK_TIMEOUT}'"))
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": LOCK_KEY})
    finally:
        engine.dispose()
