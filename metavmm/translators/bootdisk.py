"""A bootable disk of our own: a 512-byte x86 boot sector that prints a marker line on COM1 and halts.

Why: the boot check of a cold migration must prove the guest *booted from the converted disk*, not only
that QEMU runs, and a fresh broker needs an image a compute can boot before anyone publishes one (the
built-in marketplace image ``metavmm/tiny``, :mod:`metavmm.services.marketplace.builtin`). A real guest
image is hundreds of MiB and takes minutes under TCG; this sector is loaded by SeaBIOS and prints its
line well under a second after the domain starts. The marker carries an id chosen by whoever builds the
disk, so seeing it proves which disk was booted.

The machine code is written here byte by byte (16-bit real mode, loaded at 0x7C00 by the BIOS); no
assembler is needed. ``objdump -D -b binary -mi8086 --adjust-vma=0x7c00 <raw>`` shows it back.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

LOAD_ADDRESS = 0x7C00
"""Where every PC BIOS loads the boot sector (CS:IP may be 0000:7C00 or 07C0:0000; the code uses only
relative jumps and DS=0 absolute data addresses, so both work)."""
MARKER_PREFIX = "metavmm-boot-ok"
_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def boot_sector(marker_id: str) -> bytes:
    """The 512-byte MBR printing ``metavmm-boot-ok <marker_id>\\r\\n`` on COM1 (I/O port 0x3F8), then halting.

    Layout (offsets from 0x7C00)::

        00 FA          cli                 no interrupts: nothing may wake the final hlt
        01 31 C0       xor  ax, ax
        03 8E D8       mov  ds, ax         DS = 0, so [si] below is an absolute address
        05 BE lo hi    mov  si, MESSAGE    0x7C00 + 0x21
      next:
        08 AC          lodsb               al = [ds:si], si += 1
        09 84 C0       test al, al
        0B 74 11       jz   halt           a NUL ends the message
        0D 88 C4       mov  ah, al         keep the character while al reads the status
        0F BA FD 03    mov  dx, 0x3FD      COM1 line status register
      wait:
        12 EC          in   al, dx
        13 A8 20       test al, 0x20       bit 5: transmit holding register empty
        15 74 FB       jz   wait
        17 88 E0       mov  al, ah
        19 B2 F8       mov  dl, 0xF8       dx = 0x3F8: COM1 transmit holding register
        1B EE          out  dx, al
        1C EB EA       jmp  next
      halt:
        1E F4          hlt
        1F EB FD       jmp  halt           an NMI resumes after hlt: halt again
      MESSAGE:
        21 ...         the marker line, NUL-terminated

    then zeros up to offset 510 and the boot signature 0x55 0xAA that the BIOS checks.
    """
    if not _ID.fullmatch(marker_id):
        raise ValueError(f"marker id {marker_id!r} must match {_ID.pattern}")
    message = f"{MARKER_PREFIX} {marker_id}\r\n".encode("ascii") + b"\0"
    code_len = 0x21
    addr = LOAD_ADDRESS + code_len
    code = bytes([
        0xFA,                                  # cli
        0x31, 0xC0,                            # xor ax, ax
        0x8E, 0xD8,                            # mov ds, ax
        0xBE, addr & 0xFF, addr >> 8,          # mov si, MESSAGE
        0xAC,                                  # next: lodsb
        0x84, 0xC0,                            # test al, al
        0x74, 0x1E - 0x0D,                     # jz halt (rel8 from the next instruction, 0x0D)
        0x88, 0xC4,                            # mov ah, al
        0xBA, 0xFD, 0x03,                      # mov dx, 0x3FD
        0xEC,                                  # wait: in al, dx
        0xA8, 0x20,                            # test al, 0x20
        0x74, (0x12 - 0x17) & 0xFF,            # jz wait
        0x88, 0xE0,                            # mov al, ah
        0xB2, 0xF8,                            # mov dl, 0xF8
        0xEE,                                  # out dx, al
        0xEB, (0x08 - 0x1E) & 0xFF,            # jmp next
        0xF4,                                  # halt: hlt
        0xEB, (0x1E - 0x21) & 0xFF,            # jmp halt
    ])
    assert len(code) == code_len
    body = code + message
    if len(body) > 510:
        raise ValueError("marker too long for one boot sector")
    return body + bytes(510 - len(body)) + b"\x55\xaa"


def marker_line(marker_id: str) -> str:
    """What the sector prints (without the line end), for assertions and regexes."""
    return f"{MARKER_PREFIX} {marker_id}"


def write_raw_disk(path: Path, sector: bytes, *, size_mib: int = 1) -> Path:
    """A raw disk of ``size_mib`` at ``path`` whose first sector is ``sector`` (the rest reads as zeros)."""
    with open(path, "wb") as f:
        f.write(sector)
        f.truncate(size_mib * 2**20)
    return path


def write_boot_disk(path: Path, marker_id: str, *, size_mib: int = 1, qemu_img: str = "qemu-img") -> Path:
    """A disk at ``path`` booting into :func:`boot_sector`; its format follows the suffix (.raw or .qcow2)."""
    raw = write_raw_disk(path.with_suffix(".raw"), boot_sector(marker_id), size_mib=size_mib)
    if path.suffix == ".raw":
        return path
    subprocess.run([qemu_img, "convert", "-q", "-f", "raw", "-O", path.suffix.lstrip("."), str(raw), str(path)],
                   check=True)
    raw.unlink()
    return path
