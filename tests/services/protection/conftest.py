"""Fixtures of the protection tests: the two libvirt session daemons and the flow helpers of the operations tests."""

from tests.services.operations.conftest import engine_for, libvirt_hosts, qemu_img_shim, run  # noqa: F401
