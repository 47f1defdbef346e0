"""Fixtures of the protection tests: the flow helpers of the operations tests. (The DR test on two real libvirt
daemons lives beside the other libvirt flows, tests/services/operations/test_dr_libvirt.py, to share their
session-wide pair of daemons.)"""

from tests.services.operations.conftest import engine_for, run  # noqa: F401
