"""Running the external conversion tools (qemu-img, virt-v2v) safely and observably.

Every tool run goes through :func:`run_tool`: arguments as a list (never a shell), a wall-clock timeout,
and, for runs over untrusted input, kernel resource limits (address space, CPU seconds, file size)
set by prlimit(1) in the child before it runs the tool so a malicious image cannot exhaust the broker's host. Output is
read incrementally so progress can be reported while the tool runs; a failure becomes a
:class:`~metavmm.foundation.errors.TranslationError` that keeps the exit code and the tail of stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from metavmm.foundation.errors import TranslationError, hide_paths

GIB = 1024**3
STDERR_TAIL = 2000


@dataclass(frozen=True, slots=True)
class Limits:
    """Kernel limits for one tool run. ``None`` leaves a limit unset.

    ``memory_bytes`` caps the address space (RLIMIT_AS): qemu-img info on a sane image needs a few
    tens of MiB, while a crafted qcow2 with a huge L1/refcount table would otherwise allocate GiBs.
    """

    timeout_s: float = 60.0
    memory_bytes: int | None = None
    cpu_seconds: int | None = None
    file_size_bytes: int | None = None

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` under prlimit(1): the limits are set by the child itself, which is thread-safe where a
        Python ``preexec_fn`` is not (the broker hashes files in worker threads while tools start)."""
        opts = [f"--{name}={value}" for name, value in (("as", self.memory_bytes), ("cpu", self.cpu_seconds),
                                                         ("fsize", self.file_size_bytes)) if value is not None]
        return [find_tool("prlimit"), *opts, "--", *argv] if opts else list(argv)


UNTRUSTED = Limits(timeout_s=30.0, memory_bytes=1 * GIB, cpu_seconds=20)
"""Limits for qemu-img reading a file we did not make (info, check, probing)."""


def find_tool(name: str) -> str:
    """The absolute path of ``name``, or a TranslationError saying which package provides it."""
    path = shutil.which(name)
    if path is None:
        package = {"qemu-img": "qemu-utils", "prlimit": "util-linux", "xmllint": "libxml2-utils",
                   "nbdcopy": "libnbd-bin", "qemu-nbd": "qemu-utils"}.get(name, name)
        raise TranslationError(f"{name} is not installed (Debian package {package})")
    return path


@dataclass(frozen=True, slots=True)
class ToolResult:
    returncode: int
    stdout: str
    stderr: str


def _tail(text: str) -> str:
    return text[-STDERR_TAIL:].strip()


async def run_tool(argv: Sequence[str], *, limits: Limits = Limits(), env: Mapping[str, str] | None = None,
                   on_output: Callable[[str], None] | None = None, ok_codes: Sequence[int] = (0,),
                   what: str | None = None) -> ToolResult:
    """Run ``argv`` to completion and return its output; raise TranslationError on a bad exit or timeout.

    ``on_output`` receives stdout in pieces split on CR and LF as they arrive (qemu-img's ``-p`` redraws
    its progress line with CR), which is how callers report progress without waiting for the end.
    """
    what = what or os.path.basename(argv[0])
    full_env = {**os.environ, "LC_ALL": "C", **(env or {})}
    try:
        proc = await asyncio.create_subprocess_exec(
            *limits.wrap(argv), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=full_env, start_new_session=True)
    except FileNotFoundError as exc:
        raise TranslationError(f"{what}: cannot run {argv[0]}: {exc}") from exc
    out_parts: list[str] = []
    err_parts: list[str] = []

    async def pump_stdout() -> None:
        assert proc.stdout is not None
        pending = ""
        while chunk := await proc.stdout.read(4096):
            text = chunk.decode(errors="replace")
            out_parts.append(text)
            if on_output is None:
                continue
            pending += text
            *pieces, pending = pending.replace("\r", "\n").split("\n")
            for piece in pieces:
                if piece.strip():
                    on_output(piece)
        if on_output is not None and pending.strip():
            on_output(pending)

    async def pump_stderr() -> None:
        assert proc.stderr is not None
        while chunk := await proc.stderr.read(4096):
            err_parts.append(chunk.decode(errors="replace"))
            if sum(map(len, err_parts)) > 1 << 20:  # keep only the recent part of a chatty tool
                err_parts[:] = ["".join(err_parts)[-(1 << 16):]]

    pumps = asyncio.gather(pump_stdout(), pump_stderr(), proc.wait())
    try:
        await asyncio.wait_for(pumps, limits.timeout_s)
    except TimeoutError as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        raise TranslationError(f"{what} did not finish within {limits.timeout_s:g} s and was killed",
                               returncode=proc.returncode, stderr_tail=_tail("".join(err_parts))) from exc
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        with contextlib.suppress(BaseException):  # reap it (killed: at once), so its pipes close on this loop
            await asyncio.wait_for(proc.wait(), 5)
        if pumps.done() and not pumps.cancelled():
            pumps.exception()  # cancelled with its caller (a shutdown): retrieved, so asyncio logs no traceback
        raise
    stdout, stderr = "".join(out_parts), "".join(err_parts)
    rc = proc.returncode if proc.returncode is not None else -1
    if rc not in ok_codes:
        reason = _signal_reason(rc, limits)
        first = _tail(stderr).splitlines()[-1] if _tail(stderr) and rc > 0 else reason
        # the message reaches clients (a 422, an operation's error): the tool's file paths stay in the detail
        raise TranslationError(f"{what} failed (exit {rc}): {hide_paths(first)}", returncode=rc,
                               stderr_tail=_tail(stderr))
    return ToolResult(rc, stdout, stderr)


def _signal_reason(rc: int, limits: Limits) -> str:
    if rc in (-9, -24) and limits.cpu_seconds:  # SIGXCPU at the soft limit, SIGKILL at the hard one
        return f"killed: CPU limit of {limits.cpu_seconds} s reached"
    if rc < 0:
        return f"killed by signal {-rc}"
    if limits.memory_bytes:
        return f"no message (memory is limited to {limits.memory_bytes // (1024 * 1024)} MiB)"
    return "no message"
