"""The shape every filter has: a name, a scope, and one pure question.

``scope`` says where a rule can be decided, as nova's ``run_filter_once_per_request`` flag does:

- ``request``: once per request, before any site (quota);
- ``site``: once per site, from the site alone (residency, provider policy);
- ``slot``: on the site view first (a necessary condition: the best any host offers) and again on each
  host or flavor of the sites that pass (capacity, CPU, GPU, hypervisor, price).

On the hosts of an opened site a slot rule is asked once per *filter class* (hosts alike in hypervisor,
arch, vendor, features, nested flag and state: :func:`metavmm.scheduler.columns.filter_class`) unless it
has ``fails(cols, req)``, which answers for every host at once from the site's numpy columns: an array,
0 (or False) where ``check`` passes, and where it rejects a nonzero value that is equal for hosts whose
rejections have the same code (None: it rejects none). ``cols`` may also be several sites' columns end to
end (:class:`~metavmm.scheduler.columns.StackedColumns`, what a grouped explanation opens at once): the
same arrays and ``static.ids``/``static.n``, but no ``site`` and no ``views``, so ``fails`` reads arrays
only. A rule that reads a host's numbers, id or anything
outside its filter class must have ``fails`` (capacity, GPU and exclusion do); ``check`` still gives each
rejected host its message and numbers, and an explanation that groups hosts asks it once per group.
A rule with ``site_free = True`` judges a host by its filter class alone (not its site): its class
verdicts are shared by every site. A rule with ``host_free = True`` gives every host of an on-prem site its
site's verdict (price: a host is priced by its site), so it is asked once per site.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Protocol

from metavmm.scheduler.request import PlacementRequest, Verdict
from metavmm.scheduler.views import CandidateView

Scope = Literal["request", "site", "slot"]


class Filter(Protocol):
    name: ClassVar[str]
    scope: ClassVar[Scope]

    def check(self, view: CandidateView, req: PlacementRequest) -> Verdict:
        """PASS, or a rejection with a code and the numbers behind it. Pure: no I/O, no mutation."""
        ...
