"""Free /24 ranges for the networks tests make on this machine's libvirt daemons.

Every bridge of every daemon (the system one, the session "hosts", another broker's or test run's) lives in
the one kernel, and libvirt refuses to start a network whose range a route already holds ("Network is
already in use by interface ..."). A range drawn at random from a fixed block collided by chance with a
bridge left up by an earlier test, a concurrent run or another test's draw; one drawn from the ranges no
address or route of this machine holds now does not (short of two runs drawing the same one at once).
"""

from __future__ import annotations

import ipaddress
import random
import subprocess


def _held() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this machine's addresses and routes hold now."""
    out = []
    for argv in (["ip", "-4", "-o", "addr", "show"], ["ip", "-4", "route", "show", "table", "all"]):
        for word in subprocess.run(argv, capture_output=True, text=True, check=True).stdout.split():
            try:
                out.append(ipaddress.IPv4Network(word, strict=False))
            except ValueError:
                continue
    return [n for n in out if n.prefixlen > 0]  # not the default route


def free_subnets(count: int, second: range = range(150, 251)) -> list[str]:
    """``count`` distinct prefixes ``10.<second>.<third>`` (of /24 ranges) that overlap nothing held now."""
    held = [(int(n.network_address), int(n.broadcast_address)) for n in _held()]
    free = []
    for s in second:
        for t in range(256):
            first = int(ipaddress.IPv4Address(f"10.{s}.{t}.0"))
            if not any(lo <= first + 255 and first <= hi for lo, hi in held):
                free.append(f"10.{s}.{t}")
    return random.sample(free, count)
