"""A raw disk written into an EBS snapshot through the EBS direct APIs.

Why not VM Import (``ImportImage``): it needs an S3 bucket, the ``vmimport`` IAM service role and tens
of minutes of AWS-side conversion. Writing the disk block by block into a new snapshot (what AWS's own
``coldsnap`` does) needs only EC2 and EBS permissions, sends only the blocks that hold data (holes are
skipped without reading them, all-zero blocks after reading), and AWS checks every block's SHA-256
as it arrives. The snapshot then becomes an AMI with ``RegisterImage``.

The disk comes from a file (holes skipped) or from a stream read front to back (a cold migration's
export piped in: no scratch file). boto3 blocks: this runs in a worker thread (the driver's
``provider_call``); the blocks go out over a small thread pool while this thread reads and hashes the
next ones in order.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BLOCK = 512 * 1024
"""The EBS direct APIs' one block size: every PutSnapshotBlock carries exactly this many bytes."""
GIB = 2**30
UPLOAD_WORKERS = 8
"""Blocks in flight at once: EBS answers a put in tens of milliseconds, so a few in parallel keep the
link busy; AWS's request-rate limit (1,000 PutSnapshotBlock/s per snapshot) is far above this."""
PUT_ATTEMPTS = 6
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


def file_blocks(path: str | Path, disk: Any) -> Iterator[tuple[int, bytes]]:
    """The non-zero blocks of the raw disk file at ``path`` (index, 512 KiB), in order; ``disk`` (a
    hashlib object) is fed every byte of the file on the way, holes as zeros without reading them."""
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        hashed_to = 0
        for index in candidate_blocks(fd, size):
            offset = index * BLOCK
            _hash_zeros(disk, offset - hashed_to)
            data = os.pread(fd, BLOCK, offset)
            disk.update(data)
            hashed_to = offset + len(data)
            if data != _ZERO[:len(data)]:
                yield index, data + bytes(BLOCK - len(data))  # EBS takes whole blocks: the last one padded
        _hash_zeros(disk, size - hashed_to)
    finally:
        os.close(fd)


def stream_blocks(chunks: Iterable[bytes], disk: Any) -> Iterator[tuple[int, bytes]]:
    """The non-zero blocks of a raw disk read front to back in pieces of any size (a
    :class:`~metavmm.translators.diskstream.DiskStream`), regrouped into 512 KiB blocks; ``disk`` is fed
    every byte."""
    pending = bytearray()
    index = 0
    for chunk in chunks:
        disk.update(chunk)
        pending += chunk
        while len(pending) >= BLOCK:
            block = bytes(pending[:BLOCK])
            del pending[:BLOCK]
            if block != _ZERO:
                yield index, block
            index += 1
    if pending and pending != _ZERO[:len(pending)]:
        yield index, bytes(pending) + bytes(BLOCK - len(pending))


def put_blocks(ebs: Any, snapshot_id: str, blocks: Iterable[tuple[int, bytes]], disk: Any, *,
               workers: int = UPLOAD_WORKERS, throttled: Callable[[Exception], bool] = lambda _: False) -> Written:
    """Send ``blocks`` into the open snapshot ``snapshot_id``, ``workers`` at a time, while the caller's
    iterator reads and hashes the next ones; ``disk`` is the hash that iterator feeds (read once all
    blocks are out). A put that AWS throttles (``throttled``) is sent again after a pause: one block,
    not the whole disk (a stream cannot be read twice)."""
    digests: dict[int, bytes] = {}

    def put(index: int, data: bytes) -> bytes:
        digest = hashlib.sha256(data).digest()
        for attempt in range(PUT_ATTEMPTS):
            try:
                ebs.put_snapshot_block(SnapshotId=snapshot_id, BlockIndex=index, BlockData=data, DataLength=BLOCK,
                                       Checksum=_b64(digest), ChecksumAlgorithm="SHA256")
                return digest
            except Exception as exc:
                if attempt == PUT_ATTEMPTS - 1 or not throttled(exc):
                    raise
                time.sleep(min(0.2 * 2**attempt, 5.0) * random.uniform(0.8, 1.2))
        raise AssertionError("unreachable")

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ebs-put") as pool:
        pending: dict[int, Future[bytes]] = {}
        for index, data in blocks:
            pending[index] = pool.submit(put, index, data)
            if len(pending) >= 4 * workers:  # bound the memory held by blocks in flight
                for i in sorted(pending)[:workers]:
                    digests[i] = pending.pop(i).result()
        for i, future in pending.items():
            digests[i] = future.result()
    aggregate = hashlib.sha256(b"".join(digests[i] for i in sorted(digests))).digest()
    return Written(len(digests), len(digests) * BLOCK, disk.hexdigest(), _b64(aggregate))


def write_snapshot(ebs: Any, snapshot_id: str, path: str | Path, **kw: Any) -> Written:
    """Every non-zero block of the raw disk file at ``path`` into the open snapshot; the disk's SHA-256
    covers every byte of the file (what the AMI will hold)."""
    disk = hashlib.sha256()
    return put_blocks(ebs, snapshot_id, file_blocks(path, disk), disk, **kw)


def write_stream(ebs: Any, snapshot_id: str, chunks: Iterable[bytes], **kw: Any) -> Written:
    """Every non-zero block of a raw disk streamed front to back into the open snapshot (no file)."""
    disk = hashlib.sha256()
    return put_blocks(ebs, snapshot_id, stream_blocks(chunks, disk), disk, **kw)


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
