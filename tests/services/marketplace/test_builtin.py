"""The built-in image metavmm/tiny: published once through the marketplace, replicated to this machine's
libvirt sites (two real sites on the system daemon), and the federation's default image resolved."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import select

from metavmm.catalog.models import Image, ImageReplica
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import ValidationError
from metavmm.services.marketplace.builtin import TINY, default_image, ensure_builtin_images
from metavmm.services.marketplace.entries import Audience
from metavmm.translators.bootdisk import boot_sector
from tests.services.marketplace.conftest import Federation


def _with(cfg: FederationConfig, **federation: object) -> FederationConfig:
    return cfg.model_copy(update={"federation": cfg.federation.model_copy(update=federation)})


async def test_published_once_and_replicated_to_each_local_libvirt_site(federation: Federation) -> None:
    cfg = _with(federation.cfg, builtin_images=True)
    await ensure_builtin_images(federation.maker, cfg)
    await ensure_builtin_images(federation.maker, cfg)  # a restart: nothing new
    async with federation.maker() as s:
        (image,) = (await s.exec(select(Image))).all()
        replicas = (await s.exec(select(ImageReplica).where(ImageReplica.image_id == image.id))).all()
    assert image.id == TINY.image_id == "1d7bf67f-709c-5984-8df1-5c362b99c3af"  # the same on every broker
    assert (image.publisher, image.name, image.version, image.visibility, image.format, image.arch) == \
        ("metavmm", "tiny", "1", "public", "raw", "x86_64")
    assert image.size_bytes == 2**20 and image.location and Path(image.location).is_file()
    assert len(replicas) == 2 and all(r.state == "available" for r in replicas)
    for root in (federation.root / "a", federation.root / "b"):
        (disk,) = (root / "images").glob("*.raw")
        assert disk.read_bytes()[:512] == boot_sector(TINY.marker_id)  # the sector that prints the marker


async def test_nothing_is_published_without_the_switch(federation: Federation) -> None:
    await ensure_builtin_images(federation.maker, federation.cfg)
    async with federation.maker() as s:
        assert (await s.exec(select(Image))).all() == []


async def test_the_default_image_of_the_federation(federation: Federation) -> None:
    anyone = Audience(project_ids=frozenset({7}))
    async with federation.maker() as s:
        assert await default_image(s, federation.cfg, anyone) is None  # none configured
        with pytest.raises(ValidationError, match="default image metavmm/tiny is not available"):
            await default_image(s, _with(federation.cfg, default_image="metavmm/tiny"), anyone)
    await ensure_builtin_images(federation.maker, _with(federation.cfg, builtin_images=True))
    async with federation.maker() as s:
        for ref in ("metavmm/tiny", "tiny", TINY.image_id):
            image = await default_image(s, _with(federation.cfg, default_image=ref), anyone)
            assert image is not None and image.id == TINY.image_id
