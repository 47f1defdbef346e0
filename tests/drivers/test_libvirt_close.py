"""The libvirt driver never closes a connection under a call still running in a worker thread (a stop
during an inventory sync did, and libvirt-python crashed the broker: issue 24). On libvirt's own test
driver (``test:///default``)."""

from __future__ import annotations

import asyncio
import threading

import libvirt
import pytest

from metavmm.drivers.libvirt import _Shared
from metavmm.foundation.errors import ProviderUnavailable


async def test_a_close_waits_for_the_call_in_flight_and_refuses_new_ones() -> None:
    shared = _Shared(libvirt.open("test:///default"))
    inside, release = threading.Event(), threading.Event()

    def slow_call(conn: libvirt.virConnect) -> str:
        inside.set()
        release.wait(30)
        return str(conn.getHostname())  # still usable: the close waited

    call = asyncio.create_task(asyncio.to_thread(shared.use, slow_call, "t", "slow"))
    await asyncio.to_thread(inside.wait, 30)
    await asyncio.to_thread(shared.close)  # returns at once; the connection stays open for the call
    assert shared.conn.isAlive()
    with pytest.raises(ProviderUnavailable, match="closing"):
        await asyncio.to_thread(shared.use, lambda conn: conn.getHostname(), "t", "late")
    release.set()
    assert await call
    with pytest.raises(libvirt.libvirtError):  # the last user closed it
        shared.conn.getHostname()
