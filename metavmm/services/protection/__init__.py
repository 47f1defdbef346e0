"""Protection of workloads against the loss of their host or site (docs/protection.md).

- :mod:`.ha`: HA restart: a workload marked highly available is restarted elsewhere, through the scheduler
  and the operations engine, when its host is lost; the old copy is fenced first (never two running copies);
- :mod:`.ha_disk`: the one decision of where a usable copy of a lost workload's disk is;
- :mod:`.ha_actions`: the step actions of a restart (fence, settle).

Disaster-recovery replication (``dr*``) keeps recovery points at other sites; its latest recovery point
plugs into :func:`.ha_disk.usable_disk`.
"""
