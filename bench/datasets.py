"""Where a dataset's atomic files are, whether they are well formed, and importing other formats.

A dataset ``NAME`` is the folder ``NAME/`` holding ``NAME.inter`` (and optionally ``.item``,
``.user`` ...), RecBole's atomic-file layout. The folder is looked for in ``--data-dir``, then
``$BENCH_DATA_DIR``, then ``./data``; ml-100k also ships inside the RecBole wheel.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from bench.errors import BenchError
from bench.io import sha256_file, write_text

ATOMIC_TYPES = ("token", "token_seq", "float", "float_seq")


@dataclass(frozen=True)
class DataLocation:
    data_path: Path  # the parent folder, RecBole's ``data_path``
    source: str  # "data-dir", "BENCH_DATA_DIR", "./data" or "recbole wheel"

    def folder(self, name: str) -> Path:
        return self.data_path / name


def recbole_example_dir() -> Path:
    import recbole

    return Path(recbole.__file__).parent / "dataset_example"


def candidate_dirs(data_dir: str | os.PathLike | None) -> list[tuple[Path, str]]:
    dirs: list[tuple[Path, str]] = []
    if data_dir:
        dirs.append((Path(data_dir), "--data-dir"))
    if os.environ.get("BENCH_DATA_DIR"):
        dirs.append((Path(os.environ["BENCH_DATA_DIR"]), "BENCH_DATA_DIR"))
    dirs.append((Path("data"), "./data"))
    return dirs


def locate(
    name: str, data_dir: str | os.PathLike | None = None, how_to_get: str = ""
) -> DataLocation:
    """Find the folder holding ``name/name.inter`` or raise a BenchError saying where it looked."""
    places = candidate_dirs(data_dir) + [(recbole_example_dir(), "recbole wheel")]
    for base, source in places:
        if (base / name / f"{name}.inter").is_file():
            return DataLocation(base.resolve(), source)
    looked = ", ".join(str(base / name / f"{name}.inter") for base, _ in places)
    hint = f" {how_to_get.strip()}" if how_to_get else ""
    raise BenchError(f"dataset {name!r} not found; looked for {looked}.{hint}")


@cache
def _file_sha256(path: Path, size: int, mtime_ns: int) -> str:
    return sha256_file(path)  # size and mtime only key the cache


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every atomic file of a dataset folder (cached per size and mtime)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {p.name: _file_sha256(p, p.stat().st_size, p.stat().st_mtime_ns) for p in files}


def check_atomic_header(path: Path, required: list[str]) -> list[str]:
    """Validate an atomic file's header (``name:type`` columns); return the field names."""
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read data file {path}: {exc}") from exc
    fields = []
    for column in header.split("\t"):
        field_name, sep, ftype = column.partition(":")
        if not sep or ftype not in ATOMIC_TYPES or not field_name:
            raise BenchError(
                f"malformed data file {path}: header column {column!r} is not 'name:type' "
                f"with type in {', '.join(ATOMIC_TYPES)} (columns are tab-separated)"
            )
        fields.append(field_name)
    missing = [f for f in required if f not in fields]
    if missing:
        raise BenchError(
            f"malformed data file {path}: header lacks field(s) {', '.join(missing)}; "
            f"it has {', '.join(fields)}"
        )
    return fields


def import_seqtxt(
    input_path: str | os.PathLike, name: str, out_dir: str | os.PathLike = "data"
) -> Path:
    """Convert a sequence file (``user item item ...`` per line, time-ordered) to atomic files.

    Timestamps are each interaction's position in its user's line, so ordering by time
    reproduces the file's order. Nothing is written unless every line is valid.
    """
    input_path = Path(input_path)
    if not name or "/" in name or name.startswith("."):
        raise BenchError(f"invalid dataset name {name!r}")
    try:
        lines = input_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"cannot read {input_path}: {exc}") from exc
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    seen_users: dict[str, int] = {}
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if not tokens:
            continue
        if len(tokens) < 2:
            raise BenchError(
                f"{input_path}:{number}: expected 'user item [item ...]', got {line.strip()!r}"
            )
        user, items = tokens[0], tokens[1:]
        if user in seen_users:
            raise BenchError(
                f"{input_path}:{number}: user {user!r} already appeared on line {seen_users[user]}"
            )
        seen_users[user] = number
        rows.extend(f"{user}\t{item}\t{position}" for position, item in enumerate(items))
    if not seen_users:
        raise BenchError(f"{input_path}: no interactions found")
    target = Path(out_dir) / name / f"{name}.inter"
    write_text(target, "\n".join(rows) + "\n")
    return target
