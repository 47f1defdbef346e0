"""The built-in marketplace image ``metavmm/tiny``: an os_tpl on a fresh broker, with no download.

A compute needs an image (OCCI's os_tpl, REST's ``image_id``) and a fresh machine has none until
someone publishes one. The broker builds this one itself from the boot sector of
:mod:`metavmm.translators.bootdisk` (our own 34 bytes of code): a 1 MiB raw disk that prints
``metavmm-boot-ok tiny`` on COM1 and halts, so a VM booted from it shows on its console that it booted,
well under a second after it starts under TCG.

With ``federation.builtin_images`` the broker publishes it after its first inventory through the
marketplace's own publish service (verified and inspected like any upload), and keeps a replica at
every libvirt site on this machine through the replicator, so a compute there needs no copy step. The
entry has a fixed id: publishing is idempotent, and every broker gives it the same REST image id and
the same os_tpl term.

``federation.default_image`` names the image an OCCI compute gets when it names no os_tpl
(:func:`default_image`).
"""

from __future__ import annotations

import logging
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, Provider, Site
from metavmm.foundation.config import FederationConfig
from metavmm.foundation.errors import MetavmmError, NotFound, ValidationError
from metavmm.services.marketplace.entries import ADMIN, Audience, ImageMeta, get_image
from metavmm.services.marketplace.publish import publish
from metavmm.services.marketplace.replication import Replicator
from metavmm.translators.bootdisk import marker_line, write_boot_disk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BuiltinImage:
    publisher: str
    name: str
    version: str
    marker_id: str
    description: str

    @property
    def ref(self) -> str:
        return f"{self.publisher}/{self.name}"

    @property
    def image_id(self) -> str:
        """Fixed per version: a new disk is a new version with a new id."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://metavmm.dev/builtin-images/{self.ref}/{self.version}"))

    @property
    def marker(self) -> str:
        """The line its serial console shows once it booted."""
        return marker_line(self.marker_id)


TINY = BuiltinImage(
    "metavmm", "tiny", "1", "tiny",
    "A 1 MiB disk built by the broker itself (no download): a BIOS boot sector that prints "
    "'metavmm-boot-ok tiny' on the first serial port and halts. No operating system: it shows that a VM "
    "was created and booted, and costs nothing to copy.")
BUILTIN_IMAGES = (TINY,)


async def ensure_builtin_images(maker: async_sessionmaker[AsyncSession], cfg: FederationConfig) -> None:
    """Publish the built-in images once and replicate them to this machine's libvirt sites (idempotent).

    Runs after an inventory sync (the sites must be in the catalog). A failure is logged, never raised:
    the broker serves without its built-in images rather than not at all.
    """
    if not cfg.federation.builtin_images:
        return
    for builtin in BUILTIN_IMAGES:
        try:
            await publish_builtin(maker, builtin)
            for site in await local_libvirt_sites(maker, cfg):
                await Replicator(maker, cfg).replicate(builtin.image_id, site, audience=ADMIN)
        except (MetavmmError, OSError) as exc:
            log.warning("built-in image %s: %s", builtin.ref, exc)


async def publish_builtin(maker: async_sessionmaker[AsyncSession], builtin: BuiltinImage) -> Image:
    """The entry of ``builtin``: published from a freshly built disk unless it already exists."""
    async with maker() as session:
        existing = await session.get(Image, builtin.image_id)
    if existing is not None:
        return existing
    meta = ImageMeta(name=builtin.name, publisher=builtin.publisher, version=builtin.version, format="raw",
                     arch="x86_64", visibility="public", description=builtin.description, os="none",
                     tags=["builtin", "boot-test"], min_vcpus=1, min_ram_mib=16)
    with tempfile.TemporaryDirectory(prefix="metavmm-builtin-") as tmp:
        disk = write_boot_disk(Path(tmp) / f"{builtin.name}.raw", builtin.marker_id)
        async with session_scope(maker) as session:
            image = await publish(session, meta, str(disk), image_id=builtin.image_id, admin=True)
    log.info("published the built-in image %s v%s (id %s)", builtin.ref, builtin.version, builtin.image_id)
    return image


async def local_libvirt_sites(maker: async_sessionmaker[AsyncSession], cfg: FederationConfig) -> list[str]:
    """Sites of the enabled libvirt providers whose daemon runs on this machine (their disks are files here)."""
    local = [p.name for p in cfg.providers if p.kind == "libvirt" and p.enabled and not urlparse(p.endpoint).hostname]
    if not local:
        return []
    async with maker() as session:
        rows = (await session.exec(select(Site.name).join(Provider, Site.provider_id == Provider.id).where(
            Provider.name.in_(local), Site.present == True))).all()  # type: ignore[attr-defined]  # noqa: E712
    return sorted(rows)


async def default_image(session: AsyncSession, cfg: FederationConfig, audience: Audience) -> Image | None:
    """The image of a compute that names none: ``federation.default_image`` (publisher/name, name or id),
    its newest version that has not expired; None when the federation file names no default.

    Raises ValidationError (400) when the default is named but not available to ``audience``: the
    request gave no image and the broker has none to give it.
    """
    ref = cfg.federation.default_image
    if not ref:
        return None
    try:
        return await get_image(session, ref, audience)
    except NotFound:
        raise ValidationError(f"no os_tpl given, and the broker's default image {ref} is not available: "
                              "GET /mixins/os_tpl/ lists the images") from None
