"""The federation file's image and OVA limits reach uploads (issue 16.6: limits configurable, with the
config keys in docs/security.md): an upload past them is a 422 that names the key, and leaves nothing."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ConfigError
from metavmm.services.marketplace.publish import blob_dir
from tests.world import SIM, seed

API = "/api/v1"
TIGHT = SIM + """
limits:
  image_max_file_bytes: 1048576
  ova_max_members: 2
"""


@pytest.fixture
async def tight(aiohttp_client: Any, sqlite_url: str) -> tuple[Any, dict[str, str]]:
    app = create_app(parse_config(TIGHT), sqlite_url, sync=False)
    client = await aiohttp_client(app)
    w = await seed(app)
    await app[keys.OPERATIONS].stop()
    return client, w.auth("alpha_member")


async def put(client: Any, who: dict[str, str], data: bytes, fmt: str, name: str) -> Any:
    return await client.put(f"{API}/marketplace/uploads", data=data,
                            params={"format": fmt, "name": name, "publisher": "alpha-lab", "visibility": "project"},
                            headers={**who, "Content-Type": "application/octet-stream"})


def ova_of(members: int) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for i in range(members):
            info = tarfile.TarInfo("vm.ovf" if i == 0 else f"disk{i}.vmdk")
            info.size = 512
            tar.addfile(info, io.BytesIO(bytes(512)))
    return out.getvalue()


async def test_an_upload_past_the_configured_limits_is_refused(tight: tuple[Any, dict[str, str]]) -> None:
    client, alpha = tight
    small = await put(client, alpha, b"a" * (512 * 1024), "raw", "small")
    assert small.status == 201, await small.text()  # under the limit: accepted

    big = await put(client, alpha, b"b" * (2 << 20), "raw", "big")
    problem = await big.json()
    assert big.status == 422 and "over the limit of 1048576" in problem["detail"], problem

    package = await put(client, alpha, ova_of(3), "ova", "package")
    problem = await package.json()
    assert package.status == 422 and "more than 2 members" in problem["detail"], problem

    listed = await (await client.get(f"{API}/marketplace/images", headers=alpha)).json()
    names = {i["name"] for i in listed["items"]}
    assert "small" in names and not names & {"big", "package"}  # the refused ones left no entry
    incoming = blob_dir() / ".incoming"
    assert not incoming.exists() or [p for p in incoming.rglob("*") if p.is_file()] == []


def test_limits_are_checked_when_the_file_loads(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ova_max_gzip_ratio"):
        parse_config(SIM + "limits:\n  ova_max_gzip_ratio: 1\n")
    assert parse_config(TIGHT).limits.image_max_file_bytes == 1 << 20
