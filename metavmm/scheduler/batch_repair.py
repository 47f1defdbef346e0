"""Repair and local search after the batch flow: place what the flow left out, then pay less.

The flow of :mod:`metavmm.scheduler.batch` counts capacity per machine class, each task class on its
own, so on a tight catalog (demand near the free capacity) two classes count on the same cores and the
first-fit realisation leaves workloads out that a better packing places. This phase works on exact
per-host counts and improves the packing in the lexicographic order the batch promises: more placed
first, then less money.

Count moves, smallest workloads first (they are what a maximal count is made of):

- insert: the cheapest host where the workload fits (best fit among a site's hosts);
- relocate: make room on a host by moving ``m`` copies of one class living there to other hosts;
- trade: evict one bigger workload to place two or more smaller ones (net gain), then try to put the
  evicted one back elsewhere.

Cost moves, each strictly cheaper and count-neutral: move a workload to a cheaper host with room; swap
an unplaced workload for a placed dearer one that leaves room for it; swap two workloads of different
classes between hosts of different sites. Every move is checked on exact free capacity, so the result
is always feasible; the work is bounded by ``passes``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

_EPS = 1e-9


def fits(free: list[int], need: tuple[int, ...]) -> bool:
    for f, n in zip(free, need):  # noqa: B905, SIM110 - same length by construction; the plain loop is faster
        if f < n:
            return False
    return True


def _take(free: list[int], need: tuple[int, ...], k: int) -> None:
    for d, n in enumerate(need):
        free[d] -= k * n


@dataclass
class Packing:
    """Exact per-host counts of one batch: ``on[h][c]`` workloads of class c on host h."""

    need: list[tuple[int, ...]]  # per class: vCPU, RAM, GPUs per model
    free: list[list[int]]  # per host: what is left, same order
    unit: list[dict[int, float]]  # per class: host -> cost of one workload there
    on: list[Counter[int]]  # per host: class -> count
    left: list[int]  # per class: how many are unplaced
    options: list[list[tuple[float, int]]] = field(default_factory=list)  # per class, cheapest first
    size: list[float] = field(default_factory=list)  # per class: share of the total capacity one takes
    gpu_need: list[bool] = field(default_factory=list)
    gpu_free: list[bool] = field(default_factory=list)
    swaps: bool = True
    # False when the count is already proven the most (the planner's count MIP): the count moves can then
    # only fail, so their insert/relocate/trade attempts are skipped and only the cost moves run
    count_moves: bool = True

    def __post_init__(self) -> None:
        self.options = [sorted((u, h) for h, u in units.items()) for units in self.unit]
        # numpy mirrors for the hot search (_cheapest_fit): the free matrix, each class's hosts by price
        self._free = np.array(self.free, dtype=np.int64).reshape(len(self.free), -1)
        self._need = np.array(self.need, dtype=np.int64).reshape(len(self.need), -1)
        self._hosts = [np.array([h for _, h in opts], dtype=np.int64) for opts in self.options]
        self._units = [np.array([u for u, _ in opts]) for opts in self.options]
        total = [max(sum(f[d] for f in self.free), 1) for d in range(len(self.need[0]) if self.need else 0)]
        self.size = [sum(n / t for n, t in zip(need, total, strict=True)) for need in self.need]
        self.gpu_need = [any(need[2:]) for need in self.need]
        self.gpu_free = [any(f[2:]) for f in self.free]  # had GPUs for this batch when it started
        self._gpu_host = np.array(self.gpu_free, dtype=bool)

    @property
    def placed(self) -> int:
        return sum(sum(c.values()) for c in self.on)

    def cost(self) -> float:
        return sum(self.unit[c][h] * n for h, counts in enumerate(self.on) for c, n in counts.items())

    def _put(self, c: int, h: int, k: int = 1) -> None:
        _take(self.free[h], self.need[c], k)
        self._free[h] -= k * self._need[c]
        self.on[h][c] += k

    def _drop(self, c: int, h: int, k: int = 1) -> None:
        _take(self.free[h], self.need[c], -k)
        self._free[h] += k * self._need[c]
        self.on[h][c] -= k
        if not self.on[h][c]:
            del self.on[h][c]

    def _cheapest_fit(self, c: int, exclude: int = -1, below: float = float("inf")) -> int | None:
        """The cheapest host for one more of class c (under ``below``); the tightest fit among equal prices."""
        hosts, units, need = self._hosts[c], self._units[c], self._need[c]
        if below != float("inf"):
            cut = int(np.searchsorted(units, below - _EPS, "left"))
            hosts, units = hosts[:cut], units[:cut]
        ok = (self._free[hosts] >= need).all(axis=1)
        if exclude >= 0:
            ok &= hosts != exclude
        idx = np.flatnonzero(ok)
        if not idx.size:
            return None
        same = idx[units[idx] <= units[idx[0]] + _EPS]
        if same.size == 1:
            return int(hosts[same[0]])
        cand = hosts[same]
        slack = ((self._free[cand] - need) / np.maximum(need, 1) * (need > 0)).sum(axis=1)
        if not self.gpu_need[c]:  # a host's GPUs are kept for GPU work: others go there last (issue 17 item 3)
            slack = slack + 1e9 * self._gpu_host[cand]
        return int(cand[int(np.argmin(slack))])

    def improve(self, passes: int = 4) -> None:
        for _ in range(passes):
            before = (self.placed, round(self.cost(), 6))
            if self.count_moves:
                self._count_moves()
            settled = self._cost_moves()
            if (self.placed, round(self.cost(), 6)) == before or (settled and not self.count_moves):
                break  # no improving move is left: another pass would only check that again

    # -- more placed ---------------------------------------------------------------------------------
    def _count_moves(self) -> None:
        # GPU work first (the most GPUs first: they need a host with that many free), then the smallest
        order = sorted(range(len(self.need)), key=lambda c: (-sum(self.need[c][2:]), self.size[c]))
        progress = True
        while progress:
            progress = False
            for c in order:
                while self.left[c]:
                    h = self._cheapest_fit(c)
                    if h is None:
                        break
                    self._put(c, h)
                    self.left[c] -= 1
                    progress = True
            for c in order:
                while self.left[c] and (self._relocate(c) or self._trade(c)):
                    progress = True

    def _relocate(self, c: int) -> bool:
        """Room for one of class c on some host by moving workloads of other classes off it."""
        need = self.need[c]
        for _unit, h in self.options[c]:
            free = self.free[h]
            short = [d for d, (f, n) in enumerate(zip(free, need, strict=True)) if n > f]
            if not short:
                self._put(c, h)
                self.left[c] -= 1
                return True
            if any(need[d] > free[d] + sum(self.need[k][d] * n for k, n in self.on[h].items()) for d in short):
                continue  # not even emptying the host makes room
            # evict the classes that help most with what is short, one workload at a time
            helpers = sorted((k for k in self.on[h] if any(self.need[k][d] for d in short)),
                             key=lambda k: -sum(self.need[k][d] / max(need[d], 1) for d in short))
            moved: list[tuple[int, int]] = []
            ok = False
            for k in helpers:
                while self.on[h].get(k) and not ok and len(moved) < 6:
                    target = self._cheapest_fit(k, exclude=h)
                    if target is None:
                        break
                    self._drop(k, h)
                    self._put(k, target)
                    moved.append((k, target))
                    ok = fits(self.free[h], need)
                if ok or len(moved) >= 6:
                    break
            if ok:
                self._put(c, h)
                self.left[c] -= 1
                return True
            for k, target in reversed(moved):
                self._drop(k, target)
                self._put(k, h)
        return False

    def _trade(self, c: int) -> bool:
        """Evict one bigger workload where two or more of class c then fit (a net gain)."""
        need = self.need[c]
        for _unit, h in self.options[c]:
            for k in list(self.on[h]):
                if self.size[k] <= self.size[c] or k == c:
                    continue
                self._drop(k, h)
                gain = 0
                while gain < self.left[c] and fits(self.free[h], need):
                    self._put(c, h)
                    gain += 1
                if gain >= 2:
                    self.left[c] -= gain
                    self.left[k] += 1
                    back = self._cheapest_fit(k)
                    if back is not None:
                        self._put(k, back)
                        self.left[k] -= 1
                    return True
                if gain:
                    self._drop(c, h, gain)
                self._put(k, h)
        return False

    # -- less money ----------------------------------------------------------------------------------
    def _cost_moves(self) -> bool:
        """Cost moves until none improves (True) or 8 rounds (False: more may be left)."""
        for _ in range(8):
            if not (self._move_cheaper() | self._swap_unplaced() | (self.swaps and self._swap_pairs())):
                return True
        return False

    def _move_cheaper(self) -> bool:
        done = False
        for h, counts in enumerate(self.on):
            for c in list(counts):
                here = self.unit[c][h]
                while self.on[h].get(c):
                    target = self._cheapest_fit(c, exclude=h, below=here)
                    if target is None:
                        break
                    self._drop(c, h)
                    self._put(c, target)
                    done = True
        return done

    def _swap_unplaced(self) -> bool:
        """Leave out a dearer workload for a cheaper one that was left out (the count stays)."""
        done = False
        for c, n in enumerate(self.left):
            if not n:
                continue
            for unit, h in self.options[c]:
                if not self.left[c]:
                    break
                for k in sorted(self.on[h], key=lambda k: -self.unit[k][h]):
                    if self.unit[k][h] <= unit + _EPS or not self.left[c]:
                        continue
                    self._drop(k, h)
                    if fits(self.free[h], self.need[c]):
                        self._put(c, h)
                        self.left[c] -= 1
                        self.left[k] += 1
                        done = True
                        break
                    self._put(k, h)
        return done

    def _swap_pairs(self) -> bool:
        """Swap a workload on a host with one of another class on a host of another price."""
        done = False
        hosts = [h for h, counts in enumerate(self.on) if counts]
        for h1 in hosts:
            for c in list(self.on[h1]):
                if not self.on[h1].get(c):
                    continue
                for unit2, h2 in self.options[c]:
                    gain_c = self.unit[c][h1] - unit2
                    if gain_c <= _EPS:
                        break
                    f1, f2, nc = self.free[h1], self.free[h2], self.need[c]
                    for k in self.on[h2]:
                        if k == c or h1 not in self.unit[k]:
                            continue
                        if gain_c + self.unit[k][h2] - self.unit[k][h1] <= _EPS:
                            continue
                        nk = self.need[k]
                        if all(f2[d] + nk[d] >= nc[d] and f1[d] + nc[d] >= nk[d] for d in range(len(nc))):
                            self._drop(c, h1)
                            self._drop(k, h2)
                            self._put(c, h2)
                            self._put(k, h1)
                            done = True
                            break
                    if not self.on[h1].get(c):
                        break
        return done
