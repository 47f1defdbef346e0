"""A raw disk written into an EBS snapshot through the EBS direct APIs.

Why not VM Import (``ImportImage``): it needs an S3 bucket, the ``vmimport`` IAM service role and tens
of minutes of AWS-side conversion. Writing the disk block by block into a new snapshot (what AWS's own
``coldsnap`` does) needs only EC2 and EBS permissions, sends only the blocks that hold data (holes are
skipped without reading them, all-zero blocks after reading), and AWS checks every block's SHA-256
as it arrives. The snapshot then becomes an AMI with ``RegisterImage``.

boto3 blocks: this runs in a worker thread (the driver's ``provider_call``); the blocks go out over a
small thread pool while this thread reads and hashes them in order.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 512 * 1024
"""The EBS direct APIs' one block size: every PutSnapshotBlock carries exactly this many bytes."""
GIB = 2**30
UPLOAD_WORKERS = 8
"""Blocks in flight at once: EBS answers a put in tens of milliseconds, so a few in parallel keep the
link busy; AWS's request-rate limit (1,000 PutSnapshotBlock/s per snapshot) is far above this."""
_ZERO = bytes(BLOCK)


@dataclass(frozen=True, slots=True)
class Written:
    """What went into a snapshot: blocks sent, their bytes, the disk's SHA-256 (of every byte, holes as
    zeros) and the linear aggregate of the block checksums that CompleteSnapshot verifies."""

    blocks: int
    data_bytes: int
    disk_sha256: str
    aggregate: str


def volume_gib(size_bytes: int) -> int:
    """EBS volumes come in whole GiB: the snapshot's size that holds ``size_bytes`` (at least 1)."""
    return max(1, -(-size_bytes // GIB))


def _data_ranges(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The byte ranges of ``fd`` that may hold data (SEEK_DATA/SEEK_HOLE); the whole file where the
    filesystem cannot tell."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError:  # ENXIO: nothing but a hole from pos to the end
            return
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, min(end, size)
        pos = end


def candidate_blocks(fd: int, size: int) -> list[int]:
    """Indexes of the blocks that overlap data, in order; blocks wholly inside holes never get read."""
    out: list[int] = []
    for start, end in _data_ranges(fd, size):
        first, last = start // BLOCK, (end - 1) // BLOCK
        if out and out[-1] >= first:
            first = out[-1] + 1
        out.extend(range(first, last + 1))
    return out


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def write_snapshot(ebs: Any, snapshot_id: str, path: str | Path, *, workers: int = UPLOAD_WORKERS,
                   progress: Callable[[int], None] | None = None) -> Written:
    """Send every non-zero block of the raw disk at ``path`` into the open snapshot ``snapshot_id``.

    The disk's own SHA-256 is computed over every byte in order (holes hashed as zeros without reading
    them) while the blocks go out in parallel: the recorded digest describes what the AMI will hold."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        digests: dict[int, bytes] = {}
        disk = hashlib.sha256()
        sent = 0

        def put(index: int, data: bytes) -> bytes:
            digest = hashlib.sha256(data).digest()
            ebs.put_snapshot_block(SnapshotId=snapshot_id, BlockIndex=index, BlockData=data, DataLength=BLOCK,
                                   Checksum=_b64(digest), ChecksumAlgorithm="SHA256")
            return digest

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ebs-put") as pool:
            pending: dict[int, Any] = {}
            hashed_to = 0  # bytes of the disk hashed so far, in order
            for index in candidate_blocks(fd, size):
                offset = index * BLOCK
                _hash_zeros(disk, offset - hashed_to)
                data = os.pread(fd, BLOCK, offset)
                disk.update(data)
                hashed_to = offset + len(data)
                if len(data) < BLOCK:  # the disk's last, partial block: EBS takes whole blocks
                    data += bytes(BLOCK - len(data))
                if data == _ZERO:
                    continue
                pending[index] = pool.submit(put, index, data)
                sent += 1
                if len(pending) >= 4 * workers:  # bound the memory held by blocks in flight
                    for i in sorted(pending)[:workers]:
                        digests[i] = pending.pop(i).result()
                        if progress:
                            progress(BLOCK)
            _hash_zeros(disk, size - hashed_to)
            for i, future in pending.items():
                digests[i] = future.result()
                if progress:
                    progress(BLOCK)
        aggregate = hashlib.sha256(b"".join(digests[i] for i in sorted(digests))).digest()
        return Written(sent, sent * BLOCK, disk.hexdigest(), _b64(aggregate))
    finally:
        os.close(fd)


def _hash_zeros(h: Any, n: int) -> None:
    while n > 0:
        step = min(n, BLOCK)
        h.update(_ZERO[:step])
        n -= step


def hash_snapshot(ebs: Any, snapshot_id: str, size: int, *, workers: int = UPLOAD_WORKERS) -> str:
    """The SHA-256 of the first ``size`` bytes of the disk the snapshot holds, read back through the EBS
    direct APIs (blocks it does not hold are zeros, hashed without a request); every block fetched is
    checked against the SHA-256 EBS sends with it."""
    blocks: list[tuple[int, str]] = []
    token: str | None = None
    while True:
        page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id, **({"NextToken": token} if token else {}))
        blocks += [(int(b["BlockIndex"]), b["BlockToken"]) for b in page.get("Blocks", [])]
        token = page.get("NextToken")
        if not token:
            break

    def fetch(block: tuple[int, str]) -> bytes:
        got = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=block[0], BlockToken=block[1])
        data: bytes = got["BlockData"].read()
        if got.get("Checksum") and _b64(hashlib.sha256(data).digest()) != got["Checksum"]:
            raise ValueError(f"block {block[0]} of {snapshot_id} does not match the SHA-256 EBS sent with it")
        return data

    disk = hashlib.sha256()
    hashed_to = 0
    wanted = sorted(b for b in blocks if b[0] * BLOCK < size)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ebs-get") as pool:
        for (index, _), data in zip(wanted, pool.map(fetch, wanted), strict=True):
            _hash_zeros(disk, index * BLOCK - hashed_to)
            data = data[: size - index * BLOCK]
            disk.update(data)
            hashed_to = index * BLOCK + len(data)
    _hash_zeros(disk, size - hashed_to)
    return disk.hexdigest()
