"""A create request's fingerprint (what the idempotency check compares) is the one stored keys were made with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict

import pytest

from metavmm.foundation.errors import ValidationError
from metavmm.services.workloads.requests import CreateRequest, LinkSpec, check_guest


def _as_before(req: CreateRequest) -> str:
    """The fingerprint as main computed it (asdict of the whole request), which stored keys carry."""
    data = asdict(req)
    if not req.residency:  # a later field: a request without it hashes as the keys stored before it existed
        del data["residency"]
    data["links"] = [asdict(link) for link in req.links]
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def test_the_fingerprint_is_unchanged_and_tells_requests_apart() -> None:
    rich = CreateRequest(
        name="r", flavor="sim.small", image="metavmm/tiny", site="sim-a/sim-000", providers=("sim-a", "sim-b"),
        max_price_per_hour=0.5, ssh_key="ssh-ed25519 AAAA x", user_data="#cloud-config\n",
        links=(LinkSpec(target_id="0" * 36, device="vdb", attributes={"occi.core.title": "d", "n": [1, 2]}),),
        attributes={"mixins": ["a#b", "c#d"], "occi.core.title": "t", "nested": {"k": (1, "2")}},
        guest={"hostname": "h", "dns": ["10.0.0.1"]}, strategy="pack", affinity_group="g")
    for req in (CreateRequest(), CreateRequest(name="x", vcpus=1, ram_mib=64), rich):
        assert req.fingerprint() == _as_before(req)
    assert rich.fingerprint() != CreateRequest(**{**rich.__dict__, "attributes": {"mixins": ["a#b"]}}).fingerprint()
    abroad = CreateRequest(**{**rich.__dict__, "residency": ("TW",)})
    assert abroad.fingerprint() == _as_before(abroad) != rich.fingerprint()


def test_a_guest_with_further_interfaces_is_checked_before_anything_is_written() -> None:
    """A seat's further interfaces (``nics``) are checked as its own MAC is: unicast MACs only, each found."""
    seat = {"hostname": "lab-01", "mac": "52:54:00:0a:00:01", "nics": [{"mac": "52:54:00:0b:00:01",
                                                                        "address": "10.20.0.10/24"}]}
    assert check_guest(seat, "w-1") == seat
    for nics, words in (([{"mac": "53:54:00:0b:00:01"}], "multicast"), ([{"address": "10.0.0.3/24"}], "its mac")):
        with pytest.raises(ValidationError, match=words):
            check_guest({**seat, "nics": nics}, "w-1")
    with pytest.raises(ValidationError, match="unknown guest keys extra"):
        check_guest({**seat, "extra": 1}, "w-1")
