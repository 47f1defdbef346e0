"""Auto-scaling groups: members are ordinary computes of the one workload service, their count follows
metric and schedule rules (:mod:`.rules`), every decision is kept with its numbers (:mod:`.service`)."""
