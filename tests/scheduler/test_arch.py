"""The guest's CPU comes from its image: an arm64 image goes to an aarch64 host or flavor, never to a
silent x86_64 default, and when nothing runs it the refusal names the architecture."""

from __future__ import annotations

import pytest

from metavmm.scheduler.pipeline import Scheduler
from metavmm.scheduler.request import ImageRef, PlacementRequest
from metavmm.scheduler.snapshot import ImageView


def _img(arch: str, **kw: object) -> ImageView:
    return ImageView("img-1", "guest", arch, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["aarch64", "arm64", "ARM64"])
def test_an_arm_image_lands_on_the_only_aarch64_flavor(federation, arch: str) -> None:
    snap = federation(images=[_img(arch)])
    p = Scheduler(snap).place(PlacementRequest("arm", 2, 4096, image=ImageRef("img-1")))
    # the cheapest x86 candidate (hsinchu h2, 0.028/h) would be chosen under an x86_64 default
    assert p.placed and p.flavor == "m7g.xlarge" and p.site == "aws/us-east-1"
    assert p.request.cpu_arch == "aarch64"


def test_an_image_no_host_runs_is_refused_naming_the_arch(federation) -> None:
    snap = federation(images=[_img("ppc64le")])
    p = Scheduler(snap).place(PlacementRequest("power", 2, 4096, image=ImageRef("img-1")))
    assert not p.placed
    assert "no ppc64le" in p.summary
    assert p.rejections and all("ppc64le" in r.message for r in p.rejections if r.filter == "cpu")


def test_a_request_arch_that_contradicts_its_image_is_refused(federation) -> None:
    snap = federation(images=[_img("aarch64")])
    p = Scheduler(snap).place(PlacementRequest("x", 2, 4096, cpu_arch="x86_64", image=ImageRef("img-1")))
    assert not p.placed and "image is aarch64" in p.summary
    assert "image guest is aarch64, the request asks for x86_64" in p.rejections[0].message


def test_arch_spellings_are_one_arch(federation) -> None:
    snap = federation()
    assert Scheduler(snap).place(PlacementRequest("a", 2, 4096, cpu_arch="arm64")).flavor == "m7g.xlarge"
    p = Scheduler(snap).place(PlacementRequest("b", 2, 4096, cpu_arch="amd64"))
    assert p.placed and p.site == "nchc/hsinchu" and p.request.cpu_arch == "x86_64"


def test_no_image_no_arch_means_x86_64_and_any_means_anywhere(federation) -> None:
    snap = federation()
    p = Scheduler(snap).place(PlacementRequest("blank", 2, 4096, on_prem_only=False, providers=("aws",)))
    assert p.flavor == "m5.xlarge" and p.request.cpu_arch == "x86_64"  # m7g.xlarge is cheaper but aarch64
    anywhere = Scheduler(snap).place(PlacementRequest("any", 2, 4096, cpu_arch="any", providers=("aws",)))
    assert anywhere.flavor == "m7g.xlarge"


def test_cpu_features_the_image_needs_are_required(federation) -> None:
    snap = federation(images=[_img("x86_64", cpu_features=frozenset({"avx512f"}))])
    p = Scheduler(snap).place(PlacementRequest("avx", 8, 16 * 1024, image=ImageRef("img-1")))
    # hsinchu's AMD host (the cheapest, EPYC-Milan) has no avx512f; h1 there has only 4 vCPU free
    assert p.placed and p.host not in ("h1", "h2") and p.request.cpu_features == frozenset({"avx512f"})
    assert "avx512f" in snap.host_named(p.host).features
    assert any(r.candidate == "h2" and r.code == "missing cpu features" for r in p.rejections)
