"""metavmm: a meta-VMM federation broker.

One federation over on-prem OpenStack regions, libvirt/KVM hosts, VMware vCenter, AWS, Google Cloud
and Azure. See docs/architecture.md for the data flow every feature follows.
"""

__version__ = "0.1.0"
