"""Opening a sweep's Optuna storage so that many processes on many machines may start at once on a fresh database.

`optuna.storages.RDBStorage(url)` creates its tables (`metadata.create_all`), inserts the version row and stamps
alembic, and `optuna.create_study(load_if_exists=True)` inserts the study: none of this is atomic. Two processes
doing it at the same moment on an empty PostgreSQL database collide in the catalog (`IntegrityError: duplicate key
value violates unique constraint "pg_type_typname_nsp_index"`: CREATE TABLE checks for the table, then both insert
its row type). So on PostgreSQL that whole step runs under one advisory lock, held on a connection of its own;
elsewhere (SQLite, MySQL: no advisory lock we can count on) the step is retried after a short random pause, since
a second attempt finds the tables the winner made. Once created, the storage needs neither. Once opened, a storage
that is lost (its database dropped, its server gone) is one StorageError line wherever Optuna meets it, not
SQLAlchemy's chained tracebacks under Optuna's "invalid data in the commit".

A journal file (the default storage) is a line of JSON per record, appended under a lock file. A write cut short
(a full disk, a killed process) leaves a last line without its newline, which Optuna's reader skips and its next
write glues a record onto, after which no reader can read the file. So each write here is whole or cut back, and,
under the lock, a torn last record is set aside before the file is opened or written to (`_mend`).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import re
import sys
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
from nanolab.files import AppendFile, atomic_path

HEARTBEAT_INTERVAL, GRACE_PERIOD = 60, 180  # seconds, RDB storages only
# any 64-bit number, the same in every nanolab process: advisory locks are per database, so one key serializes
# the setup of one database and nothing else
LOCK_KEY = 0x6E616E6F_6C616231  # "nanolab1"
LOCK_TIMEOUT = "120s"  # a holder that hangs (not one that dies: its lock goes with its connection) fails the others
ATTEMPTS = 5  # without a lock: tries of the whole setup step, each after a random pause of up to 0.2 * attempt s
# heartbeats and their retry callback are "experimental" in Optuna 5, and stable enough for us
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

T = TypeVar("T")


class StorageError(NanolabError):
    """An opened storage is lost: one line naming it (password masked) and what a new connection finds."""


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
    path = Path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = JournalFileOpenLock(url)
    if path.is_file():
        with _held(lock):
            _mend(path)
    return JournalStorage(Journal(url, lock_obj=lock))


class Journal(JournalFileBackend):
    """Optuna's journal file, whose records are written whole or not at all, and never after a torn one."""

    def append_logs(self, logs: list[dict]) -> None:
        with _held(self._lock):
            if _torn(self._file_path):  # a process died mid-write since this one opened the file
                _mend(Path(self._file_path))
            with AppendFile(Path(self._file_path), sync=True) as f:  # a failed write is cut back to the last record
                f.write("".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs))


@contextmanager
def _held(lock: JournalFileOpenLock) -> Iterator[None]:
    lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _torn(path: str) -> bool:
    with open(path, "rb") as f:
        if f.seek(0, os.SEEK_END) == 0:
            return False
        f.seek(-1, os.SEEK_END)
        return f.read(1) != b"\n"


def _mend(path: Path) -> None:
    """Under the journal's lock: a last record without its newline (a write that never finished) is moved to
    `<journal>.torn-<n>` and the journal cut back to the record before it, in one line on stderr. A record that is
    not whole anywhere else is damage nanolab cannot undo: NanolabError, the file unchanged."""
    data = path.read_bytes()
    *lines, tail = data.split(b"\n")
    for number, line in enumerate(lines, start=1):
        try:
            json.loads(line)
        except ValueError:
            raise NanolabError(
                f"{path}: line {number} of {len(lines) + bool(tail)} is not a whole record, and a write cut short "
                f"leaves only the last line torn: the file was damaged, so nanolab changes nothing. Keep a copy, "
                f"then cut it to its first {number - 1} lines to go on with the study as it stood there, or start "
                f"a new study with another --storage") from None
    if tail:
        aside = next(p for n in itertools.count(1) if not (p := path.with_name(f"{path.name}.torn-{n}")).exists())
        with atomic_path(aside) as tmp:
            tmp.write_bytes(tail)
        os.truncate(path, len(data) - len(tail))
        print(f"nanolab: {path}: its last record was cut short (a write that never finished: a full disk, a killed "
              f"process); its {len(tail)} bytes moved to {aside}, the study goes on from the record before",
              file=sys.stderr, flush=True)


def _rdb(url: str) -> RDBStorage:
    storage = RDBStorage(url, heartbeat_interval=HEARTBEAT_INTERVAL, grace_period=GRACE_PERIOD,
                         heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1))
    sqlalchemy.event.listen(storage.engine, "handle_error", _lost(url))  # opened: a failure from now on is a loss
    return storage


def _lost(url: str) -> Callable[[sqlalchemy.engine.ExceptionContext], StorageError | None]:
    """SQLAlchemy's handle_error hook: a connection that broke, or that cannot be made again, becomes a StorageError.
    Other errors (a deadlock, an integrity error) stay SQLAlchemy's, for Optuna to retry or raise."""

    def hook(context: sqlalchemy.engine.ExceptionContext) -> StorageError | None:
        if context.is_pre_ping or not (context.is_disconnect or context.connection is None):
            return None
        # a broken connection does not say why: a new one does (the database dropped, the server down)
        why = _connecting(url) if context.is_disconnect else context.original_exception
        return StorageError(f"storage {safe(url)}: {_what(why or context.original_exception)}")

    return hook


def _connecting(url: str) -> Exception | None:
    """What a new connection to `url` fails with; None when it connects."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        engine.connect().close()
    except sqlalchemy.exc.SQLAlchemyError as exc:
        return getattr(exc, "orig", None) or exc
    finally:
        engine.dispose()
    return None


def _what(exc: BaseException) -> str:
    """'the database is gone (database "db" does not exist)', else 'lost the connection (<the error's first line>)'."""
    text = str(exc).strip()
    if gone := re.search(r'database "[^"]*" does not exist', text):
        return f"the database is gone ({gone.group(0)})"
    first = text.splitlines()[0] if text else ""
    return f"lost the connection ({type(exc).__name__}: {first})"


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
