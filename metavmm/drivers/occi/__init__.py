"""The OCCI client driver: a partner's OCCI 1.2 site (another metavmm, or any OCCI server) as a provider."""

from metavmm.drivers.occi.driver import OcciDriver

__all__ = ["OcciDriver"]
