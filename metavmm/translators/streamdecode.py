"""Disk formats decoded front to back: a disk's bytes as they arrive written as the raw disk they describe.

qemu-img reads its input at random offsets, so a disk arriving over the network is normally written
to a file first and converted from there. Three formats need no such file, because the layout tells
where each piece of data belongs by the time it arrives:

- **raw**: each byte is at its own offset (written as it comes, zero pieces left as holes);
- **qcow2** whose tables come before the data they map, as qemu-img writes it (header, refcount table,
  L1 table, then each L2 table just before the first data cluster of its 512 MiB): a data cluster is
  written at its guest offset the moment it arrives. A cluster whose role is not known yet (a refcount
  block; in another layout an L2 table before the L1 table, or data before its L2 table) is *spilled*
  to a sparse file at its own offset and resolved from there at the end, so only what the layout makes
  random access is staged. Compressed clusters are read from the spill too (their bytes are small);
- **vmdk streamOptimized** (what VMware exports and what ``vmdk:streamOptimized`` writes): a sequence
  of grain markers, each naming its sector and carrying its deflated grain.

Every other layout (a backing file, encryption, an external data file, extended L2 entries, zstd, a
monolithicSparse vmdk, vdi, vpc, vhdx) is refused by :func:`decoder_for`'s sniffing with
:class:`NotStreamable` before anything is written, and the caller stages the bytes for qemu-img instead.
A decoder reads untrusted input: every offset is bounds-checked against the declared virtual size
(itself bounded by the image limits), and nothing of the input is executed or followed.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

from metavmm.foundation.errors import TranslationError

SECTOR = 512
QCOW_MAGIC = b"QFI\xfb"
VMDK_MAGIC = b"KDMV"
_OFFSET = 0x00FFFFFFFFFFFE00  # bits 9-55: a host offset in an L1 or L2 entry
_COMPRESSED, _ZERO = 1 << 62, 1
_QCOW_MAX_L1 = 32 * 2**20 // 8  # qemu's own bound on L1 entries (QCOW_MAX_L1_SIZE)
_QCOW_KNOWN_INCOMPATIBLE = 0b11  # dirty, corrupt: anything else (external data, zstd, extended L2) is refused
_VMDK_COMPRESSED, _VMDK_MARKERS = 1 << 16, 1 << 17
_VMDK_EOS = 0


class NotStreamable(TranslationError):
    """The disk's layout needs random access: its bytes must be staged for qemu-img."""


class Writer:
    """A decoder's output: the raw disk, written sparse (zero pieces stay holes) with its length set at the end;
    and the spill file for bytes whose place is not known yet (``spilled``: the bytes staged)."""

    def __init__(self, out: Path, spill: Path) -> None:
        self.out_path, self.spill_path = out, spill
        self.fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self._spill: int | None = None
        self.spilled = 0

    def put(self, data: bytes | memoryview, offset: int) -> None:
        if not _zero(data):
            _pwrite(self.fd, data, offset)

    def spill(self, data: bytes | memoryview, offset: int) -> None:
        if _zero(data):
            return  # a hole of the spill file reads as zeros
        if self._spill is None:
            self._spill = os.open(self.spill_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        _pwrite(self._spill, data, offset)
        self.spilled += len(data)

    def spilled_at(self, offset: int, length: int) -> bytes:
        """What the spill holds at ``offset`` (zeros where nothing was spilled)."""
        got = os.pread(self._spill, length, offset) if self._spill is not None else b""
        return got.ljust(length, b"\0")

    def close(self, size: int | None = None) -> None:
        """The output complete: its length set, the spill file gone."""
        if self.fd >= 0:
            if size is not None:
                os.ftruncate(self.fd, size)
            os.close(self.fd)
            self.fd = -1
        if self._spill is not None:
            os.close(self._spill)
            self._spill = None
        self.spill_path.unlink(missing_ok=True)

    def abort(self) -> None:
        """A failed decode: nothing of it stays."""
        self.close()
        self.out_path.unlink(missing_ok=True)


_ZEROS: dict[int, bytes] = {}


def _zero(data: bytes | memoryview) -> bool:
    """All zeros: a memcmp against a zero block of that length (one per length seen: clusters, chunks), after
    a look at three bytes that settles it for almost any piece of data."""
    n = len(data)
    if not n or data[0] or data[n - 1] or data[n // 2]:
        return not n
    zeros = _ZEROS.get(n)
    if zeros is None:
        zeros = bytes(n)
        if len(_ZEROS) < 16:
            _ZEROS[n] = zeros
    return (data.tobytes() if isinstance(data, memoryview) else data) == zeros


def _pwrite(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class Decoder:
    """Fed the disk's bytes in order (:meth:`feed`), writes the raw disk; :meth:`finish` at the end.

    A piece fed is only read during the call: what a decoder holds on to (a partial cluster, marker or grain)
    it copies into its own ``buf``, so the caller may refill the piece's buffer at once (``keeps_pieces``, as
    :class:`~metavmm.translators.diskstream.Sink` asks)."""

    virtual_size = 0
    keeps_pieces = False

    def __init__(self, writer: Writer, what: str) -> None:
        self.writer, self.what = writer, what
        self.buf = bytearray()
        self.pos = 0  # stream offset of buf[0]

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        raise NotImplementedError

    def bad(self, why: str) -> TranslationError:
        return TranslationError(f"{self.what}: {why}")


class RawDecoder(Decoder):
    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        self.writer.put(chunk, self.pos)
        self.pos += len(chunk)

    def finish(self) -> None:
        self.virtual_size = self.pos
        self.writer.close(self.pos)


class QcowDecoder(Decoder):
    """qcow2 version 2 or 3 without backing file, encryption, external data file or extended L2 entries."""

    def __init__(self, writer: Writer, what: str, header: bytes, max_virtual: int) -> None:
        super().__init__(writer, what)
        (_, version, backing, _, bits, size, crypt, l1_size, l1_at, _, _, _, _) = struct.unpack_from(
            ">4sIQIIQIIQQIIQ", header)
        incompatible = struct.unpack_from(">Q", header, 72)[0] if version >= 3 else 0
        if version not in (2, 3) or backing or crypt or incompatible & ~_QCOW_KNOWN_INCOMPATIBLE or incompatible & 2:
            raise NotStreamable(f"{what}: a qcow2 with a backing file, encryption, a corrupt flag or features "
                                "beyond plain clusters is read by qemu-img from a staged file")
        if not 9 <= bits <= 21:
            raise self.bad(f"qcow2 cluster_bits {bits} is out of range")
        if size > max_virtual:
            raise self.bad(f"virtual size {size} bytes is over the limit of {max_virtual}")
        self.cs, self.bits, self.virtual_size = 1 << bits, bits, size
        per_l2 = self.cs // 8
        if l1_size * per_l2 * self.cs < size or l1_size > _QCOW_MAX_L1:  # a grown disk's L1 may be larger
            raise self.bad(f"qcow2 L1 table of {l1_size} entries does not fit its virtual size {size}")
        if l1_at % self.cs:
            raise self.bad("qcow2 L1 table is not cluster-aligned")
        self.l1_at, self.l1_len = l1_at, l1_size * 8
        self.l1: list[int] | None = None if l1_size else []
        self.l1_bytes = bytearray()
        self.l2_at: dict[int, int] = {}  # host offset of an L2 table -> its L1 index
        self.l2_done: set[int] = set()
        self.data: dict[int, list[int]] = {}  # host cluster -> guest offsets it holds
        self.written: set[int] = set()
        self.compressed: list[tuple[int, int, int]] = []  # (guest, host offset, bytes)

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        held = bool(self.buf)  # a partial cluster from the last piece: gathered first; else read in place
        if held:
            self.buf += chunk
        data = self.buf if held else chunk
        cs, n = self.cs, len(data) // self.cs * self.cs
        with memoryview(data) as view:
            for i in range(0, n, cs):
                self._cluster(self.pos + i, view[i:i + cs])
            if not held:
                self.buf += view[n:]  # the partial cluster at the end, copied: the piece is only lent
        if held:
            del self.buf[:n]
        self.pos += n

    def _cluster(self, at: int, data: memoryview) -> None:
        cs = self.cs
        if self.l1 is None and at + cs > self.l1_at and at < self.l1_at + self.l1_len:
            lo = max(0, self.l1_at - at)
            self.l1_bytes += data[lo:lo + self.l1_len - len(self.l1_bytes)]
            if len(self.l1_bytes) == self.l1_len:
                self._read_l1(bytes(self.l1_bytes))
            return
        if at in self.l2_at and at not in self.l2_done:
            self._read_l2(at, bytes(data))
            return
        guests = self.data.get(at)
        if guests is not None:
            for guest in guests:
                self.writer.put(data[:max(0, min(cs, self.virtual_size - guest))], guest)
            self.written.add(at)
            return
        if at == 0 and data[:4] == QCOW_MAGIC:
            return  # the header, read already
        self.writer.spill(data, at)  # its role is not known (yet): a refcount block, or metadata after data

    def _read_l1(self, raw: bytes) -> None:
        self.l1 = [e & _OFFSET for e in struct.unpack(f">{len(raw) // 8}Q", raw)]
        for index, at in enumerate(self.l1):
            if at:
                if at % self.cs:
                    raise self.bad("qcow2 L2 table is not cluster-aligned")
                self.l2_at[at] = index

    def _read_l2(self, at: int, raw: bytes) -> None:
        self.l2_done.add(at)
        cs, per_l2 = self.cs, self.cs // 8
        base = self.l2_at[at] * per_l2 * cs
        x = 62 - (self.bits - 8)
        for j, entry in enumerate(struct.unpack(f">{per_l2}Q", raw)):
            guest = base + j * cs
            if not entry or guest >= self.virtual_size:
                continue
            if entry & _COMPRESSED:
                host = entry & ((1 << x) - 1)
                sectors = (entry >> x) & ((1 << (self.bits - 8)) - 1)
                self.compressed.append((guest, host, (sectors + 1) * SECTOR - (host % SECTOR)))
            elif not entry & _ZERO and (host := entry & _OFFSET):
                if host % cs:
                    raise self.bad("qcow2 data cluster is not cluster-aligned")
                self.data.setdefault(host, []).append(guest)

    def finish(self) -> None:
        if self.buf:  # a last, partial cluster
            self._cluster(self.pos, memoryview(bytes(self.buf).ljust(self.cs, b"\0")))
            self.pos += len(self.buf)
            self.buf.clear()
        end = self.pos
        if self.l1 is None:
            raise self.bad(f"the qcow2 stream ended ({end} bytes) before its L1 table")
        w, cs = self.writer, self.cs
        for at in sorted(set(self.l2_at) - self.l2_done):  # L2 tables that came before the L1 table
            if at + cs > end:
                raise self.bad(f"qcow2 L2 table at {at} lies beyond the stream's {end} bytes")
            self._read_l2(at, w.spilled_at(at, cs))
        for host, guests in self.data.items():  # data that came before its L2 table
            if host in self.written:
                continue
            if host >= end:
                raise self.bad(f"qcow2 data cluster at {host} lies beyond the stream's {end} bytes")
            data = w.spilled_at(host, cs)
            for guest in guests:
                w.put(data[:max(0, min(cs, self.virtual_size - guest))], guest)
        for guest, host, length in self.compressed:
            if host + length > end + SECTOR:
                raise self.bad(f"qcow2 compressed cluster at {host} lies beyond the stream's {end} bytes")
            try:
                data = zlib.decompressobj(-12).decompress(w.spilled_at(host, length), cs)
            except zlib.error as exc:
                raise self.bad(f"qcow2 compressed cluster at {host} does not inflate: {exc}") from None
            w.put(data[:max(0, min(cs, self.virtual_size - guest))], guest)
        w.close(self.virtual_size)


class VmdkStreamDecoder(Decoder):
    """vmdk streamOptimized: grain markers (sector, deflated grain) after the header's overhead; the grain and
    metadata tables are not needed (each grain says where it goes)."""

    def __init__(self, writer: Writer, what: str, header: bytes, max_virtual: int) -> None:
        super().__init__(writer, what)
        version, flags, capacity, grain, _, _, _, _, _, overhead = struct.unpack_from("<IIQQQQIQQQ", header, 4)
        algorithm = struct.unpack_from("<H", header, 77)[0]
        if version != 3 or not flags & _VMDK_COMPRESSED or not flags & _VMDK_MARKERS or algorithm != 1:
            raise NotStreamable(f"{what}: a vmdk other than streamOptimized (deflated grains with markers) is read "
                                "by qemu-img from a staged file")
        self.virtual_size = capacity * SECTOR
        if self.virtual_size > max_virtual:
            raise self.bad(f"virtual size {self.virtual_size} bytes is over the limit of {max_virtual}")
        if not 1 <= grain <= 1 << 15:
            raise self.bad(f"vmdk grain of {grain} sectors is out of range")
        self.grain_bytes = grain * SECTOR
        self.next = overhead * SECTOR  # stream offset of the next marker
        self.ended = False

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self.ended:
            self.pos += len(chunk)
            return
        self.buf += chunk
        i = self._markers()
        del self.buf[:i]  # once per piece: deleting each grain from the front would move the rest every time
        self.pos += i

    def _markers(self) -> int:
        """Decode the whole markers in ``buf``; the bytes of it consumed."""
        buf, i = self.buf, 0
        while not self.ended:
            skip = self.next - (self.pos + i)
            if skip > 0:  # header, descriptor, tables, a metadata marker's sectors: not needed
                if len(buf) - i < skip:
                    return len(buf)
                i += skip
            if len(buf) - i < 16:
                return i
            lba, size, kind = struct.unpack_from("<QII", buf, i)
            if size == 0:  # a metadata marker: its type, then ``lba`` sectors of its table
                if kind == _VMDK_EOS:
                    self.ended = True
                    return len(buf)
                self.next = self.pos + i + SECTOR + lba * SECTOR
                continue
            if size > 2 * self.grain_bytes + 1024:
                raise self.bad(f"a vmdk grain marker claims {size} compressed bytes")
            if len(buf) - i < 12 + size:
                return i
            inflate = zlib.decompressobj(15)
            try:
                data = inflate.decompress(memoryview(buf)[i + 12:i + 12 + size], self.grain_bytes)
            except zlib.error as exc:
                raise self.bad(f"the vmdk grain at sector {lba} does not inflate: {exc}") from None
            guest = lba * SECTOR
            if guest >= self.virtual_size or inflate.unconsumed_tail:
                raise self.bad(f"a vmdk grain at sector {lba} lies beyond the disk's {self.virtual_size} bytes")
            self.writer.put(data[:self.virtual_size - guest], guest)
            self.next = self.pos + i + -(-(12 + size) // SECTOR) * SECTOR
        return i

    def finish(self) -> None:
        """The end-of-stream marker is optional (qemu-img writes none: its file ends after the last grain), but
        the stream must not end inside a marker or a grain."""
        if (not self.ended and self.pos < self.next) or not _zero(self.buf):
            raise self.bad(f"the vmdk stream ended ({self.pos + len(self.buf)} bytes) inside a marker or a grain")
        self.writer.close(self.virtual_size)


HEADER_BYTES = SECTOR
"""What :func:`decoder_for` needs to see before it can choose (a qcow2 header, a vmdk sparse header)."""


def decoder_for(fmt: str, header: bytes, writer: Writer, what: str, max_virtual: int) -> Decoder:
    """The decoder of a ``fmt`` disk whose first bytes are ``header`` (:data:`HEADER_BYTES`, fewer only for a
    shorter disk); NotStreamable when its layout needs random access, TranslationError when it is not a
    ``fmt`` disk at all."""
    if fmt == "raw":
        return RawDecoder(writer, what)
    if fmt == "qcow2":
        if header[:4] != QCOW_MAGIC or len(header) < 104:
            raise TranslationError(f"{what}: not a qcow2 disk (no qcow2 header)")
        return QcowDecoder(writer, what, header, max_virtual)
    if fmt == "vmdk" and header[:4] == VMDK_MAGIC and len(header) >= 79:
        return VmdkStreamDecoder(writer, what, header, max_virtual)
    raise NotStreamable(f"{what}: a {fmt} disk is read by qemu-img from a staged file")


STREAMED_FORMATS = frozenset({"raw", "qcow2", "vmdk"})
"""Formats :func:`decoder_for` may decode as they arrive (each still sniffed: a layout needing random access
is staged)."""
