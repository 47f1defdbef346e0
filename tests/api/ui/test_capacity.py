"""The capacity screen's numbers: the database aggregates them, and they agree with a count made by hand."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from typing import Any

from metavmm.api.ui.inventory import site_capacity
from metavmm.catalog.models import Host, Provider, Site, Workload


def _catalog(rng: random.Random) -> tuple[list[Any], list[Host], list[Workload]]:
    provider = Provider(id=1, name="lab", kind="libvirt")
    sites = [Site(id=i, provider_id=1, name=f"lab/r{i}", region=f"r{i}") for i in (1, 2, 3)]
    hosts = [Host(site_id=rng.choice((1, 2, 3)), name=f"h{i}", hypervisor_type="kvm", cpu_arch="x86_64",
                  cpu_cores=rng.choice((8, 16)), memory_mib=65536, vcpus_used=rng.randrange(8),
                  gpus=rng.choice(({}, {}, {}, {"L4": 2}, {"L4": 1, "H100": 4})))
             for i in range(60)]
    workloads = [Workload(kind="compute", name=f"w{i}", site_id=rng.choice((1, 2, 3, None)),
                          present=rng.random() > 0.2,
                          spec=rng.choice(({}, {"vcpus": 2}, {"gpu_model": "L4", "gpu_count": rng.randrange(3)},
                                           {"gpu_model": "H100", "gpu_count": 2}, {"gpu_model": None})))
                 for i in range(80)]
    return [provider, *sites], hosts, workloads


def _by_hand(hosts: list[Host], workloads: list[Workload]) -> dict[int, dict[str, dict[str, int]]]:
    total: dict[int, Counter[str]] = defaultdict(Counter)
    used: dict[int, Counter[str]] = defaultdict(Counter)
    for h in hosts:
        total[h.site_id].update(h.gpus)
    for w in workloads:
        if w.present and w.site_id is not None and w.spec.get("gpu_model") and w.spec.get("gpu_count"):
            used[w.site_id][w.spec["gpu_model"]] += w.spec["gpu_count"]
    return {s: {m: {"total": total[s][m], "used": used[s][m]} for m in sorted(set(total[s]) | set(used[s]))}
            for s in (1, 2, 3)}


async def test_gpus_per_site_match_a_count_by_hand(sessions: Any) -> None:
    rng = random.Random(7)
    inventory, hosts, workloads = _catalog(rng)
    expected = _by_hand(hosts, workloads)
    async with sessions() as session:
        session.add_all(inventory)
        await session.flush()
        session.add_all([*hosts, *workloads])
        await session.commit()
        rows = await site_capacity(session)
    assert [r["site"] for r in rows] == ["lab/r1", "lab/r2", "lab/r3"]
    assert {r["id"]: r["gpus"] for r in rows} == expected
    assert any(g["used"] for r in rows for g in r["gpus"].values())  # the seed exercises GPUs in use
    assert sum(r["hosts"] for r in rows) == 60
    assert {r["id"]: r["vcpus_used"] for r in rows} == {
        s: sum(h.vcpus_used for h in hosts if h.site_id == s) for s in (1, 2, 3)}
