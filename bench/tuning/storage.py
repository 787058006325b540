"""Where studies live: a journal file (default ``<out>/studies/journal.log``) or a database URL.

A journal file works across the processes of one machine (Optuna locks it for each append), which
is what local Ray workers need. Workers on other machines cannot reach it: with a Ray cluster
(``--ray-address``) the storage must be a database server every node reaches (postgresql://,
mysql://).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.executor import is_cluster

JOURNAL_NAME = "journal.log"


def default_journal(out: str | os.PathLike) -> Path:
    return Path(out).resolve() / "studies" / JOURNAL_NAME


def is_url(spec: str) -> bool:
    return "://" in spec


def resolve(
    storage: str | os.PathLike | None, out: str | os.PathLike, ray_address: str | None = None
) -> str:
    """The storage spec every process opens: a database URL, or an absolute journal file path."""
    spec = str(storage) if storage is not None else str(default_journal(out))
    if is_cluster(ray_address):  # nodes on other machines (not --ray-address local)
        if not is_url(spec):
            raise BenchError(
                f"--ray-address: the journal file {spec} is local to this machine; pass --storage "
                "a database URL every node reaches (postgresql://user@host/db)"
            )
        if spec.startswith("sqlite"):
            raise BenchError(
                "--ray-address: an SQLite file is local to one machine; pass --storage a database "
                "server URL every node reaches (postgresql://user@host/db)"
            )
    if is_url(spec):
        return spec
    return str(Path(spec).expanduser().resolve())


def open_storage(spec: str, create: bool = True) -> Any:
    """An Optuna storage for ``spec``; a BenchError when it cannot be opened."""
    import optuna

    if is_url(spec):
        if spec.startswith("sqlite:///"):
            database = Path(spec.removeprefix("sqlite:///"))
            if not create and not database.is_file():  # SQLite would create an empty one
                raise BenchError(f"no study storage at {database} (run bench tune first)")
            database.parent.mkdir(parents=True, exist_ok=True)
        try:
            return optuna.storages.RDBStorage(spec)
        except Exception as exc:  # sqlalchemy raises many kinds: bad URL, driver missing, refused
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise BenchError(f"cannot open storage {spec}: {message}") from exc
    path = Path(spec)
    if not create and not path.is_file():
        raise BenchError(f"no study storage at {path} (run bench tune first, or pass --storage)")
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.journal.JournalStorage(backend)


def repair_journal(spec: str) -> bool:
    """Drop a half-written last record (a writer killed mid-append), under Optuna's own lock.

    Optuna stops reading at such a record, and the next append would glue onto it and corrupt the
    log. The record was never acknowledged to anyone, so dropping it loses nothing. Returns
    whether anything was cut.
    """
    if is_url(spec) or not Path(spec).is_file():
        return False
    from optuna.storages.journal import JournalFileSymlinkLock
    from optuna.storages.journal._file import get_lock_file

    with get_lock_file(JournalFileSymlinkLock(spec)):
        with open(spec, "rb+") as f:
            data = f.read()
            if not data or data.endswith(b"\n"):
                return False
            f.truncate(data.rfind(b"\n") + 1)
    return True


def describe(spec: str) -> str:
    """The spec without a password, for logs and file headers."""
    if not is_url(spec):
        return spec
    scheme, _, rest = spec.partition("://")
    credentials, at, host = rest.rpartition("@")
    if at and ":" in credentials:
        credentials = credentials.split(":", 1)[0] + ":***"
    return f"{scheme}://{credentials}{at}{host}"
