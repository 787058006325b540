"""Checkpoint files cut into parts small enough for a git host, and put back together.

Git hosts refuse single files over about 100 MiB (GitHub: 100 MiB), and an unfinished run's
"last" checkpoint can be larger (the Vamp family's on Amazon Beauty: about 310-620 MiB, see
docs/training.md), yet the checkpoints of unfinished runs are committed so that a fresh machine
can continue them. :func:`split_large` replaces every file over ``max_bytes`` under a folder by
``<name>.part-000``, ``<name>.part-001``, ... and a manifest ``<name>.parts.json``
(:class:`PartsManifest`: the size and SHA-256 of every part and of the whole);
:func:`join_all` puts each file back, checked against its manifest, and removes the parts.
``bench run`` and ``bench plan`` with ``--resume`` join a run's own folder before they look for
its checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.errors import BenchError
from bench.io import sha256_file, write_json

SCHEMA = 1
MANIFEST_SUFFIX = ".parts.json"
PART_SUFFIX = ".part-"
# Under GitHub's 100 MiB limit with room to spare.
DEFAULT_MAX_BYTES = 95 * 2**20


@dataclass(frozen=True)
class Part:
    file: str  # the part's name, beside the manifest
    size: int
    sha256: str


@dataclass(frozen=True)
class PartsManifest:
    """What a split file was: its name, size and SHA-256, and its parts in order."""

    name: str
    size: int
    sha256: str
    parts: tuple[Part, ...]
    schema: int = SCHEMA

    @classmethod
    def read(cls, path: Path) -> PartsManifest:
        try:
            values = json.loads(path.read_text())
            if values.get("schema") != SCHEMA:
                raise ValueError(f"schema {values.get('schema')} is not {SCHEMA}")
            parts = tuple(Part(**p) for p in values["parts"])
            return cls(values["name"], int(values["size"]), values["sha256"], parts)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"malformed parts manifest {path}: {exc}") from exc


def manifest_path(path: Path) -> Path:
    """Where the manifest of ``path``'s parts is (whether or not it is split)."""
    return path.with_name(path.name + MANIFEST_SUFFIX)


def _remove_parts(folder: Path, manifest: PartsManifest) -> None:
    for part in manifest.parts:
        (folder / part.file).unlink(missing_ok=True)


def split_file(path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> PartsManifest:
    """Replace ``path`` by parts of at most ``max_bytes`` and their manifest. The parts and the
    manifest are written before the file is removed: a process killed on the way leaves the
    file whole (and perhaps stray parts, which the next split or join replaces)."""
    if max_bytes < 1:
        raise BenchError(f"the largest part must be at least one byte, not {max_bytes}")
    old = manifest_path(path)
    if old.is_file():  # parts of an earlier version of this file
        _remove_parts(path.parent, PartsManifest.read(old))
    whole = hashlib.sha256()
    parts: list[Part] = []
    with path.open("rb") as source:
        while block := source.read(max_bytes):
            whole.update(block)
            name = f"{path.name}{PART_SUFFIX}{len(parts):03d}"
            tmp = path.with_name(f".{name}.{os.getpid()}.tmp")
            tmp.write_bytes(block)
            os.replace(tmp, path.with_name(name))
            parts.append(Part(name, len(block), hashlib.sha256(block).hexdigest()))
    manifest = PartsManifest(path.name, sum(p.size for p in parts), whole.hexdigest(), tuple(parts))
    write_json(old, asdict(manifest))
    path.unlink()
    return manifest


def join_file(manifest_file: Path) -> Path:
    """Put a split file back from its parts, each and the whole checked against the manifest,
    and remove the parts and the manifest. If the whole file is already there (a join killed
    before it cleaned up), it must be the one the manifest describes."""
    manifest = PartsManifest.read(manifest_file)
    folder = manifest_file.parent
    target = folder / manifest.name
    if target.exists():
        if target.stat().st_size != manifest.size or sha256_file(target) != manifest.sha256:
            raise BenchError(
                f"{target} and parts of another version of it ({manifest_file.name}) are both "
                "there: remove the one that is out of date"
            )
    else:
        tmp = folder / f".{manifest.name}.{os.getpid()}.tmp"
        whole = hashlib.sha256()
        try:
            with tmp.open("wb") as out:
                for part in manifest.parts:
                    path = folder / part.file
                    if not path.is_file():
                        raise BenchError(f"{path} is missing ({manifest_file.name} lists it)")
                    data = path.read_bytes()
                    if len(data) != part.size or hashlib.sha256(data).hexdigest() != part.sha256:
                        raise BenchError(f"{path} does not match {manifest_file.name}")
                    whole.update(data)
                    out.write(data)
            if whole.hexdigest() != manifest.sha256:
                raise BenchError(f"the parts of {manifest_file.name} do not make up the file")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
    _remove_parts(folder, manifest)
    manifest_file.unlink()
    return target


def _is_part(path: Path) -> bool:
    return PART_SUFFIX in path.name or path.name.endswith(MANIFEST_SUFFIX)


def split_large(root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> list[PartsManifest]:
    """Split every file under ``root`` larger than ``max_bytes`` (:func:`split_file`)."""
    large = [
        p
        for p in sorted(Path(root).rglob("*"))
        if p.is_file() and not _is_part(p) and p.stat().st_size > max_bytes
    ]
    return [split_file(p, max_bytes) for p in large]


def join_all(root: Path) -> list[Path]:
    """Join every split file under ``root`` (:func:`join_file`); returns the files put back."""
    return [join_file(m) for m in sorted(Path(root).rglob(f"*{MANIFEST_SUFFIX}"))]
