"""A guest that does nothing but dirty its memory: a 512-byte boot sector, written here byte by byte.

Live migration with a busy guest is only worth measuring if the guest really re-dirties its memory
while it moves. No guest OS is needed for that: BIOS loads this sector at 0x7c00; it switches the CPU
to 32-bit protected mode (flat 4 GiB segments, A20 on), prints ``MARKER`` on the first serial port (so
a wait can see it run), then writes a counter into every ``stride`` bytes from 1 MiB up to the end of
the guest's RAM, over and over, forever. With the default stride of one page every page of that range
is dirty again after each sweep (under QEMU TCG a sweep of 1 GiB takes a few milliseconds), so
pre-copy alone can never catch up: what the migration modes (auto-converge, post-copy) are for.

Nothing is fetched or assembled by a tool: the instruction bytes are below, with their assembly, as in
:mod:`metavmm.translators.bootdisk` (the product's own boot sector, which prints and halts);
``objdump -D -b binary -mi386 --adjust-vma=0x7c00`` shows the 32-bit part back.
"""

from __future__ import annotations

import asyncio
import struct
import time
from pathlib import Path
from typing import TYPE_CHECKING

from metavmm.translators.bootdisk import LOAD_ADDRESS as LOAD_AT
from metavmm.translators.bootdisk import write_raw_disk

if TYPE_CHECKING:
    from metavmm.drivers.base import Driver

MARKER = "metavmm-dirty: writing"
FIRST = 0x100000  # the sweep starts above the first MiB (this code, the BIOS data, VGA)
MIB = 1 << 20


def boot_sector(ram_mib: int, stride: int = 4096) -> bytes:
    """The boot sector of a guest with ``ram_mib`` of RAM that writes one dword every ``stride`` bytes of
    [1 MiB, ram_mib MiB) in an endless loop."""
    if ram_mib < 2 or ram_mib > 3072:
        raise ValueError("the sweep needs 2 MiB to 3 GiB of RAM (below the PCI hole)")
    if stride < 4 or stride % 4:
        raise ValueError("stride: a multiple of 4 bytes")
    end = ram_mib * MIB
    real16 = bytes.fromhex(
        "fa"        # cli
        "31c0"      # xor ax, ax
        "8ed8"      # mov ds, ax
        "e492"      # in al, 0x92          fast A20 gate
        "0c02"      # or al, 2
        "24fe"      # and al, 0xfe          (bit 0 would reset the machine)
        "e692"      # out 0x92, al
    )
    # lgdt [gdt_desc]; mov eax, cr0; or al, 1; mov cr0, eax; jmp 0x08:pm32 -- addresses filled in below
    lgdt_len, cr0_len, jmp_len = 5, 3 + 2 + 3, 5
    pm32_at = LOAD_AT + len(real16) + lgdt_len + cr0_len + jmp_len
    pm32 = bytearray(bytes.fromhex(
        "66b81000"    # mov ax, 0x10          the data segment
        "8ed8"        # mov ds, ax
        "8ec0"        # mov es, ax
        "8ed0"        # mov ss, ax
        "bc007c0000"  # mov esp, 0x7c00
        "66baf803"    # mov dx, 0x3f8         COM1
        "be"          # mov esi, msg          (its imm32 is patched below)
    ))
    msg_ptr_at = len(pm32)
    pm32 += bytes(4)
    pm32 += bytes.fromhex(
        "ac"          # .s: lodsb
        "84c0"        # test al, al
        "7403"        # jz .done
        "ee"          # out dx, al
        "ebf8"        # jmp .s
        "31d2"        # .done: xor edx, edx   the counter
    )
    outer = len(pm32)
    pm32 += b"\x42"                                   # .outer: inc edx
    pm32 += b"\xbf" + struct.pack("<I", FIRST)       # mov edi, FIRST
    inner = len(pm32)
    pm32 += b"\x89\x17"                               # .inner: mov [edi], edx
    pm32 += b"\x81\xc7" + struct.pack("<I", stride)   # add edi, stride
    pm32 += b"\x81\xff" + struct.pack("<I", end)      # cmp edi, end
    pm32 += b"\x72" + struct.pack("<b", inner - (len(pm32) + 2))  # jb .inner
    pm32 += b"\xeb" + struct.pack("<b", outer - (len(pm32) + 2))  # jmp .outer
    code_len = len(real16) + lgdt_len + cr0_len + jmp_len + len(pm32)
    gdt_at = LOAD_AT + (code_len + 7) // 8 * 8
    gdt = bytes(8) + bytes.fromhex("ffff0000009acf00") + bytes.fromhex("ffff00000092cf00")  # null, code, data
    desc_at = gdt_at + len(gdt)
    desc = struct.pack("<HI", len(gdt) - 1, gdt_at)
    msg_at = desc_at + len(desc)
    pm32[msg_ptr_at:msg_ptr_at + 4] = struct.pack("<I", msg_at)
    switch = (b"\x0f\x01\x16" + struct.pack("<H", desc_at)  # lgdt [desc]
              + bytes.fromhex("0f20c0" "0c01" "0f22c0")     # mov eax, cr0; or al, 1; mov cr0, eax
              + b"\xea" + struct.pack("<HH", pm32_at, 0x08))  # jmp 0x08:pm32
    code = real16 + switch + bytes(pm32)
    sector = code.ljust(gdt_at - LOAD_AT, b"\x90") + gdt + desc + MARKER.encode() + b"\r\n\0"
    if len(sector) > 510:
        raise AssertionError("the boot sector outgrew 510 bytes")
    return sector.ljust(510, b"\0") + b"\x55\xaa"


def write_disk(path: Path, ram_mib: int, stride: int = 4096, size_mib: int = 1) -> Path:
    """A raw disk image of ``size_mib`` whose first sector is :func:`boot_sector` (an image to provision)."""
    return write_raw_disk(path, boot_sector(ram_mib, stride), size_mib=size_mib)


async def until_dirtying(driver: Driver, vm_id: str, timeout_s: float = 30) -> None:
    """Wait until the guest's boot sector says on its serial console that it writes (the driver's
    ``console_output``); RuntimeError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while MARKER not in await driver.console_output(vm_id):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{vm_id} did not start dirtying its memory in {timeout_s:.0f} s")
        await asyncio.sleep(0.2)
