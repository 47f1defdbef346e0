"""Protection of workloads against the loss of their host or site (docs/protection.md, docs/dr.md).

- :mod:`.ha`: HA restart: a workload marked highly available is restarted elsewhere, through the scheduler
  and the operations engine, when its host is lost; the old copy is fenced first (never two running copies);
- :mod:`.ha_disk`: the one decision of where a usable copy of a lost workload's disk is;
- :mod:`.ha_volumes`: which attached volumes a restart carries to the new copy, and which stay (and why);
- :mod:`.ha_networks`: where each network interface goes on the new copy (same, twin, follows, left), for an HA
  restart and for a DR failover and failback alike;
- :mod:`.ha_actions`: the step actions of a restart (fence, volumes, settle).

Disaster-recovery replication (``dr*``) keeps verified recovery points of a workload's disk at another
site, on an interval, and fails the workload over to them (and back); its latest verified point at the
replication target (:func:`.dr_store.restart_point`) is what :func:`.ha_disk.usable_disk` falls back on when
no shared-storage disk survives, and :func:`.dr.boot_point` boots it for HA as for a failover:

- :mod:`.dr`: the one service every front end calls: the replication policy, recovery points, replicate
  now, failover (planned or unplanned) and failback, each an engine operation; ``boot_point``, the steps
  that make a point a running VM;
- :mod:`.dr_store`: the catalog side (points, chains, the latest verified point);
- :mod:`.dr_actions`: the step actions (replicate, retain, verify, record-and-switch, release);
- :mod:`.dr_loop`: the broker's loop that submits the replications that are due.
"""
