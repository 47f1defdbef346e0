"""Capacity consumed by placements not yet in the catalog, kept beside the immutable snapshot.

``reserve`` deducts a placement so the next decision sees it (nova's ``consume_from_request``);
``unreserve`` gives it back and is idempotent, as Kubernetes requires of Unreserve: calling it twice,
or for a reservation that never existed, changes nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from metavmm.foundation.prices import gpu_model_key


@dataclass(frozen=True, slots=True)
class Reservation:
    key: str
    site_id: int
    host_id: int | None
    vcpus: int
    ram_mib: int
    gpu_model: str | None = None
    gpu_count: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "gpu_model", gpu_model_key(self.gpu_model))  # the host views' spelling


LOG_KEEP = 100_000


class Ledger:
    """Per-host deltas of vCPUs, RAM and GPUs on top of a snapshot."""

    def __init__(self) -> None:
        self._by_key: dict[str, Reservation] = {}
        self.vcpus: dict[int, int] = defaultdict(int)
        self.ram_mib: dict[int, int] = defaultdict(int)
        self.gpus: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self.site_version: dict[int, int] = defaultdict(int)  # bumps when a site's hosts change
        self.host_version: dict[int, int] = defaultdict(int)  # bumps when a host's numbers change
        # every bump in order, (site id, host id or None), so a reader catches up on what changed since its
        # position instead of comparing every site's version; positions count from ``log_base`` (the oldest
        # half is dropped past LOG_KEEP: a reader behind that compares every version again)
        self.log: list[tuple[int, int | None]] = []
        self.log_base = 0

    def __contains__(self, key: str) -> bool:
        return key in self._by_key

    def __len__(self) -> int:
        return len(self._by_key)

    def reserve(self, res: Reservation) -> None:
        """Record a placement; reserving the same key again replaces the earlier one."""
        self.unreserve(res.key)
        self._by_key[res.key] = res
        self._apply(res, +1)

    def unreserve(self, key: str) -> bool:
        """Give a reservation back. Idempotent: returns False when there was nothing to give back."""
        res = self._by_key.pop(key, None)
        if res is None:
            return False
        self._apply(res, -1)
        return True

    def release_host(self, host_id: int, site_id: int, vcpus: int, ram_mib: int, gpu_model: str | None = None,
                     gpu_count: int = 0) -> None:
        """Capacity freed by a workload leaving a host (migration plans): a negative delta."""
        self.vcpus[host_id] -= vcpus
        self.ram_mib[host_id] -= ram_mib
        if gpu_model and gpu_count:
            self.gpus[host_id][gpu_model_key(gpu_model) or gpu_model] -= gpu_count
        self.site_version[site_id] += 1
        self.host_version[host_id] += 1
        self._logged(site_id, host_id)

    def since(self, position: int) -> list[tuple[int, int | None]] | None:
        """The bumps after ``position`` (a value of :attr:`position` read earlier); None when they are no
        longer all kept."""
        if position < self.log_base:
            return None
        return self.log[position - self.log_base:]

    @property
    def position(self) -> int:
        """Where the log ends now."""
        return self.log_base + len(self.log)

    def _logged(self, site_id: int, host_id: int | None) -> None:
        self.log.append((site_id, host_id))
        if len(self.log) > LOG_KEEP:
            drop = len(self.log) // 2
            del self.log[:drop]
            self.log_base += drop

    def _apply(self, res: Reservation, sign: int) -> None:
        self.site_version[res.site_id] += 1
        self._logged(res.site_id, res.host_id)
        if res.host_id is None:
            return
        self.host_version[res.host_id] += 1
        self.vcpus[res.host_id] += sign * res.vcpus
        self.ram_mib[res.host_id] += sign * res.ram_mib
        if res.gpu_model and res.gpu_count:
            self.gpus[res.host_id][res.gpu_model] += sign * res.gpu_count
