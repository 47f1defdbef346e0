"""Tight batch-placement instances (seeded): 20 sites x 8 hosts, demand 80-105% of the free capacity.

The loose catalog of bench/common.py asks for about a tenth of its free vCPUs, so any placer fits
everything and only cost is compared. Here the requests add up to 80-105% of what the hosts have free
(drawn per instance), in mixed vCPU/RAM/GPU sizes, so what a placer leaves out and how it packs show.
Hosts and prices are built directly (no sim driver state): site prices per vCPU, GiB and GPU vary by a
seeded factor so the cheapest packing is not trivial.

``python -m bench.tight SEED`` prints one instance's summary.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from metavmm.foundation.records import HostInfo, Inventory, PriceInfo, SiteInfo
from metavmm.scheduler.request import PlacementRequest
from metavmm.scheduler.snapshot import Snapshot, snapshot_from_inventories

SITES, HOSTS_PER_SITE = 20, 8
GPU_MODELS = ("H100", "A30")
CPU_SHAPES = ((2, 4), (2, 16), (4, 8), (4, 32), (8, 16), (8, 64), (16, 64), (16, 32))  # vCPU, GiB
GPU_SHAPES = ((4, 32, 1), (8, 64, 2), (16, 128, 4), (8, 96, 1))  # vCPU, GiB, GPUs


@dataclass(frozen=True)
class Tight:
    seed: int
    snapshot: Snapshot
    requests: list[PlacementRequest]
    ratio: float  # vCPU demand / free vCPUs

    def describe(self) -> str:
        return (f"seed {self.seed}: {len(self.requests)} workloads, demand {self.ratio:.0%} of free vCPUs on "
                f"{sum(len(s.hosts) for s in self.snapshot.sites)} hosts in {len(self.snapshot.sites)} sites")


def tight_instance(seed: int, *, sites: int = SITES, hosts_per_site: int = HOSTS_PER_SITE) -> Tight:
    rng = random.Random(seed)
    site_infos = [SiteInfo(f"t-{i:02d}", (f"t-{i:02d}a",)) for i in range(sites)]
    hosts: list[HostInfo] = []
    free_v = free_r = 0
    free_g = dict.fromkeys(GPU_MODELS, 0)
    for s in site_infos:
        for j in range(hosts_per_site):
            cores = rng.choice((16, 32, 48, 64))
            mem_mib = cores * rng.choice((4, 8)) * 1024
            gpus: dict[str, int] = {}
            if rng.random() < 0.25:
                gpus = {rng.choice(GPU_MODELS): rng.choice((2, 4, 8))}
            used_v = rng.randrange(0, cores // 2)
            used_r = rng.randrange(0, mem_mib // 2048) * 1024
            hosts.append(HostInfo(f"{s.region}-h{j}", s.region, "kvm", "x86_64", cpu_vendor="Intel",
                                  cpu_model="Skylake-Server-IBRS", cpu_features=("sse4.2", "avx2", "vmx"),
                                  cpu_cores=cores, memory_mib=mem_mib, gpus=gpus, nested_virt=True,
                                  vcpus_used=used_v, memory_mib_used=used_r))
            free_v += cores - used_v
            free_r += mem_mib - used_r
            for m, n in gpus.items():
                free_g[m] += n
    prices: list[PriceInfo] = []
    for s in site_infos:
        factor = Decimal(str(round(rng.uniform(0.6, 1.6), 3)))
        for unit, base, gpu in (("vcpu-hour", "0.02", None), ("gib-hour", "0.004", None),
                                ("gpu-hour", "2.5", "H100"), ("gpu-hour", "0.9", "A30")):
            prices.append(PriceInfo("custom", s.region, Decimal(base) * factor * Decimal(str(round(
                rng.uniform(0.85, 1.15), 3))), "USD", "bench (tight)", date(2026, 1, 1), unit, gpu_model=gpu))
    inv = Inventory(sites=tuple(site_infos), hosts=tuple(hosts), prices=tuple(prices))
    snap = snapshot_from_inventories([("tight", "sim", True, ("host_inventory",), inv)])
    ratio = rng.uniform(0.80, 1.05)
    reqs: list[PlacementRequest] = []
    # GPU workloads first: about `ratio` of each model's free GPUs
    for model in GPU_MODELS:
        need = 0
        while need < ratio * free_g[model]:
            v, gib, g = rng.choice(GPU_SHAPES)
            reqs.append(PlacementRequest(f"g{len(reqs)}", v, gib * 1024, gpu_model=model, gpu_count=g,
                                         expected_hours=24))
            need += g
    dv = sum(r.vcpus for r in reqs)
    dr = sum(r.ram_mib for r in reqs)
    while dv < ratio * free_v and dr < ratio * free_r:
        v, gib = rng.choice(CPU_SHAPES)
        ram = gib * 1024
        reqs.append(PlacementRequest(f"w{len(reqs)}", v, ram, expected_hours=24))
        dv += v
        dr += ram
    rng.shuffle(reqs)
    return Tight(seed, snap, reqs, dv / free_v)


if __name__ == "__main__":
    print(tight_instance(int(sys.argv[1]) if len(sys.argv) > 1 else 0).describe())
