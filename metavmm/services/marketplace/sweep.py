"""Sweeping the blob store: blobs no catalog row references, and scratch files of publishes cut short.

A publish moves its blob into the store (:func:`~.publish._store`) before its transaction commits the
entry's row: a broker killed between the two (kill -9, a power cut) leaves a blob nobody references,
and an upload killed mid-stream leaves its scratch files in ``.incoming``. Nothing else would ever
remove them, so the broker sweeps at start and every ``marketplace.blob_sweep_s``.

The sweeper cannot tell an orphan from the blob of a publish still in flight (stored, not yet
committed: the same file, no row yet) except by age, so nothing younger than the grace period
(``marketplace.blob_sweep_grace_s``) is touched. The store makes age mean time in the store:
``_store`` stamps a blob's modification time when it enters the store, or when a publish reuses the
blob already there (content-addressed: the same bytes published again), so a reused orphan turns
young before its new row commits. A sweep in another process can still race that stamp by the
instant between its age check and its unlink; the broker's own sweep runs on the event loop of its
own publishes, between their awaits, so it cannot. A scratch entry counts its age from its newest write:
an upload that wrote nothing for the whole grace period is taken for one cut short.

A blob is referenced when an entry's ``location`` names a file of that name (blobs are named by their
SHA-256 and format): a state directory moved since the rows were written does not turn every blob
into an orphan. Blobs kept are made 0600 if an earlier version left them looser.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlmodel import select

from metavmm.catalog.models import Image
from metavmm.services.marketplace.publish import blob_dir

log = logging.getLogger(__name__)

INCOMING = ".incoming"


@dataclass
class SweepReport:
    """What one sweep did: paths removed (blobs and scratch entries), bytes freed, blobs kept."""

    removed: list[Path] = field(default_factory=list)
    freed_bytes: int = 0
    kept: int = 0
    young: int = 0  # unreferenced, but younger than the grace period (perhaps a publish in flight)


async def referenced_names(sessions: Any) -> set[str]:
    """The file names of every entry's location (a path or a URL: its last part)."""
    async with sessions() as session:
        locations = (await session.exec(select(Image.location).where(Image.location.is_not(None)))).all()  # type: ignore[union-attr]
    return {Path(str(loc).rstrip("/")).name for loc in locations if loc}


def _newest_mtime(path: Path) -> float:
    """A file's modification time; a directory's newest over everything in it (an OVA being unpacked)."""
    newest = path.lstat().st_mtime
    if path.is_dir() and not path.is_symlink():
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                try:
                    newest = max(newest, (Path(root) / name).lstat().st_mtime)
                except FileNotFoundError:
                    continue
    return newest


def _size(path: Path) -> int:
    if path.is_dir() and not path.is_symlink():
        return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file())
    return path.lstat().st_size


def _remove(path: Path, report: SweepReport) -> None:
    size = _size(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    report.removed.append(path)
    report.freed_bytes += size


async def sweep_blobs(sessions: Any, *, grace_s: float, now: float | None = None) -> SweepReport:
    """Remove the blobs no entry references and the scratch entries, each older than ``grace_s``.

    The references are read first: a publish that commits after that read stored (or stamped) its blob
    after the read too, so its blob is younger than the grace period when it is looked at."""
    report = SweepReport()
    store = blob_dir()
    if not store.is_dir():
        return report
    names = await referenced_names(sessions)
    cutoff = (time.time() if now is None else now) - grace_s
    for path in sorted(store.iterdir()):
        try:
            if path.name == INCOMING:
                for scratch in sorted(path.iterdir()):
                    if _newest_mtime(scratch) < cutoff:
                        _remove(scratch, report)
                continue
            if not path.is_file() or path.is_symlink():
                continue  # not the store's: left alone
            if path.name in names:
                report.kept += 1
                if path.stat().st_mode & 0o777 != 0o600:
                    path.chmod(0o600)
            elif path.lstat().st_mtime < cutoff:
                _remove(path, report)
            else:
                report.young += 1
        except FileNotFoundError:  # removed meanwhile (another sweep, a publish's own clean-up)
            continue
    return report


async def sweep_and_log(sessions: Any, grace_s: float) -> SweepReport:
    """One round of the broker's sweep: :func:`sweep_blobs`, what it removed in the log (a quiet store says nothing)."""
    report = await sweep_blobs(sessions, grace_s=grace_s)
    if report.removed:
        log.info("blob store: removed %d unreferenced blobs or scratch entries (%d bytes): %s", len(report.removed),
                 report.freed_bytes, ", ".join(p.name for p in report.removed[:5]))
    return report
