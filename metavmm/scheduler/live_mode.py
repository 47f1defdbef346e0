"""How a live migration copies memory: pre-copy, auto-converge or post-copy, and why.

Pre-copy sends all memory while the guest runs, then again what the guest dirtied meanwhile, until
what is left fits in the pause (libvirt's downtime limit). Each pass re-sends about ``dirty rate /
link rate`` of the one before, so a guest that dirties memory faster than the link carries it never
converges, and one that dirties more than a fraction of it takes many passes:

- **auto-converge** (libvirt ``VIR_MIGRATE_AUTO_CONVERGE``): the source throttles the guest's vCPUs,
  starting at ``initial_throttle`` percent and raising it each pass that does not converge, until the
  guest dirties less than the link sends. The guest runs slower for the time of the move.
- **post-copy** (``VIR_MIGRATE_POSTCOPY`` + ``migrateStartPostCopy``): after one pre-copy pass the
  guest runs at the target and pulls every page it touches that has not arrived; each page crosses
  once, so the time is bounded by one pass whatever the dirty rate. The guest runs at the target while
  pages arrive (a failed link then loses the guest: the source no longer has a whole copy); the target
  host needs userfaultfd for QEMU.

The choice is pure (numbers in, a mode and its reason out): the plan asks it with the domain's memory
size and the link's rate, and asks again with the measured dirty rate when the size alone does not
settle it. Rates are MiB per second.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass

PRECOPY = "precopy"
AUTO_CONVERGE = "auto-converge"
POSTCOPY = "postcopy"
MODES = (PRECOPY, AUTO_CONVERGE, POSTCOPY)

MEASURE_S = 1.0  # measuring the dirty rate samples the guest for this long (libvirt's calc period)
# Dirtying under this share of the link: pre-copy converges in a few passes. The share is small because the
# measured rate is a lower bound: page sampling sees a page written a thousand times in the period once.
CONVERGING_SHARE = 0.1
FIRST_THROTTLE_MIN, THROTTLE_MAX = 20, 99  # percent: QEMU's own initial throttle, and its ceiling


@dataclass(frozen=True, slots=True)
class LiveMode:
    mode: str  # one of MODES
    why: str  # one line, with the numbers it was decided on
    initial_throttle: int | None = None  # auto-converge: percent of vCPU time taken from the guest at first

    def as_params(self) -> dict[str, object]:
        """What the plan's migrate step and the operation keep of the choice."""
        out: dict[str, object] = {"live_mode": self.mode, "why_live_mode": self.why}
        if self.initial_throttle is not None:
            out["auto_converge_initial"] = self.initial_throttle
        return out


def _mib(value: float) -> str:
    return f"{value:,.0f} MiB" if value >= 10 else f"{value:.1f} MiB"


def by_size(ram_mib: int, link_mib_per_s: float, offered: Collection[str]) -> LiveMode | None:
    """The mode when the memory size settles it, else None: measure the dirty rate and ask :func:`by_dirty_rate`.

    Size settles it when there is nothing to choose (the provider offers neither auto-converge nor
    post-copy) or when all of the memory crosses the link within the time a measurement would take:
    then a few extra pre-copy passes cost less than measuring would, whatever the guest does.
    """
    if AUTO_CONVERGE not in offered and POSTCOPY not in offered:
        return LiveMode(PRECOPY, "pre-copy: the providers offer neither auto-converge nor post-copy")
    one_pass_s = ram_mib / link_mib_per_s if ram_mib > 0 else math.inf
    if one_pass_s <= MEASURE_S:
        return LiveMode(PRECOPY, f"pre-copy: its {_mib(ram_mib)} of memory cross the {_mib(link_mib_per_s)}/s link in "
                                 f"{one_pass_s:.2f} s, less than measuring its dirty rate would take")
    return None


def by_dirty_rate(ram_mib: int, link_mib_per_s: float, dirty_mib_per_s: float, offered: Collection[str]) -> LiveMode:
    """The mode for a guest measured dirtying ``dirty_mib_per_s`` of its memory over a link of ``link_mib_per_s``.

    Under ``CONVERGING_SHARE`` of the link, pre-copy converges in a few passes. At or above the link's
    rate it never does: post-copy where offered (bounded by one pass), else auto-converge. In between,
    auto-converge where offered (it slows the guest only as much as needed), else post-copy. The first
    throttle is set so that the throttled guest would dirty under the converging share of the link.
    """
    ratio = dirty_mib_per_s / link_mib_per_s
    rates = (f"it dirties {_mib(dirty_mib_per_s)}/s of its {_mib(ram_mib)}, "
             f"{ratio:.0%} of the {_mib(link_mib_per_s)}/s link")
    if ratio <= CONVERGING_SHARE:
        return LiveMode(PRECOPY, f"pre-copy: {rates}, so each pass re-sends under "
                                 f"{CONVERGING_SHARE:.0%} of the one before")
    never = ratio >= 1.0
    if POSTCOPY in offered and (never or AUTO_CONVERGE not in offered):
        return LiveMode(POSTCOPY, f"post-copy: {rates}; pre-copy would "
                                  f"{'never converge' if never else 'converge slowly'}, post-copy sends each page "
                                  f"once (about {ram_mib / link_mib_per_s:.0f} s)")
    if AUTO_CONVERGE in offered:
        throttle = min(THROTTLE_MAX, max(FIRST_THROTTLE_MIN,
                                         math.ceil(100 * (1 - CONVERGING_SHARE / ratio))))
        return LiveMode(AUTO_CONVERGE, f"auto-converge from {throttle}% throttle: {rates}; pre-copy would "
                                       f"{'never converge' if never else 'converge slowly'}", throttle)
    return LiveMode(PRECOPY, f"pre-copy: {rates}, but the providers offer neither auto-converge nor post-copy")

