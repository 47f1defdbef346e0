"""Signed image lists: verified before anything is imported; unsigned, tampered, expired, foreign refused."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import select

from metavmm.catalog.db import session_scope
from metavmm.catalog.models import Image, ImageListSubscription
from metavmm.foundation.errors import ImageListRefused, ValidationError
from metavmm.services.marketplace.entries import state_of
from metavmm.services.marketplace.imagelist import (
    ImageListDoc,
    generate_key,
    load_private_key,
    public_pem,
    sign_list,
    verify_list,
)
from metavmm.services.marketplace.subscriptions import SubscriptionIn, subscribe, sync_subscription

SHA512 = "ab" * 64


def doc(version: str = "1", *, expires_in: timedelta = timedelta(days=7), images: list[dict] | None = None,
        identifier: str = "school-a-images") -> ImageListDoc:
    now = datetime.now(UTC)
    if images is None:
        images = [image("img-1", "intro-linux", SHA512)]
    return ImageListDoc.model_validate({
        "dc:identifier": identifier, "dc:title": "School A", "dc:date:created": now - timedelta(minutes=1),
        "dc:date:expires": now + expires_in, "hv:version": version,
        "hv:endorser": {"dc:creator": "school-a", "hv:email": "it@school-a.example"},
        "hv:images": [{"hv:image": i} for i in images],
    })


def image(ident: str, title: str, sha512: str, **kw: object) -> dict:
    return {"dc:identifier": ident, "dc:title": title, "hv:uri": f"https://a.example/{ident}", "hv:size": 1024,
            "sl:checksum:sha512": sha512, "hv:format": "qcow2", "sl:osname": "Debian", "sl:osversion": "12",
            "metavmm:tags": ["course"], **kw}


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_list_verifies_and_keeps_its_content(key: Ed25519PrivateKey) -> None:
    signed = sign_list(doc(), key)
    got = verify_list(signed, key.public_key(), identifier="school-a-images", endorser="school-a")
    assert got.identifier == "school-a-images" and got.endorser.creator == "school-a"
    assert [e.image.sha512 for e in got.images] == [SHA512]
    assert json.loads(base64.b64decode(json.loads(signed)["payload"]))["hv:imagelist"]["hv:images"]


def test_unsigned_lists_are_refused(key: Ed25519PrivateKey) -> None:
    bare = json.dumps(doc().to_json(), default=str).encode()
    with pytest.raises(ImageListRefused, match="unsigned image list"):
        verify_list(bare, key.public_key())
    envelope = json.loads(sign_list(doc(), key))
    del envelope["signature"]
    with pytest.raises(ImageListRefused, match="unsigned"):
        verify_list(json.dumps(envelope).encode(), key.public_key())


def test_tampered_lists_are_refused(key: Ed25519PrivateKey) -> None:
    envelope = json.loads(sign_list(doc(), key))
    payload = base64.b64decode(envelope["payload"]).replace(SHA512.encode(), b"cd" * 64)
    envelope["payload"] = base64.b64encode(payload).decode()
    with pytest.raises(ImageListRefused, match="altered after signing"):
        verify_list(json.dumps(envelope).encode(), key.public_key())


def test_lists_of_another_endorser_are_refused(key: Ed25519PrivateKey) -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ImageListRefused, match="untrusted endorser"):
        verify_list(sign_list(doc(), other), key.public_key())


def test_expired_replayed_and_foreign_lists_are_refused(key: Ed25519PrivateKey) -> None:
    with pytest.raises(ImageListRefused, match="expired at"):
        verify_list(sign_list(doc(expires_in=timedelta(seconds=-1)), key), key.public_key())
    with pytest.raises(ImageListRefused, match="replayed"):
        verify_list(sign_list(doc("3"), key), key.public_key(), not_older_than="10")
    with pytest.raises(ImageListRefused, match="not the subscribed"):
        verify_list(sign_list(doc(identifier="other"), key), key.public_key(), identifier="school-a-images")
    with pytest.raises(ImageListRefused, match="not JSON"):
        verify_list(b"\x00garbage", key.public_key())


def test_key_files(tmp_path: Path) -> None:
    private, public = generate_key(tmp_path / "endorser.pem")
    assert private.stat().st_mode & 0o777 == 0o600 and "PUBLIC KEY" in public.read_text()
    assert public_pem(load_private_key(private).public_key()) == public.read_text()
    with pytest.raises(ValidationError, match="refusing to overwrite"):
        generate_key(private)


async def test_sync_imports_only_verified_lists_and_tracks_changes(sqlite_sessions, key: Ed25519PrivateKey,
                                                                   tmp_path: Path) -> None:
    path = tmp_path / "list.json"
    async with session_scope(sqlite_sessions) as s:
        await subscribe(s, SubscriptionIn(name="school-a", url=str(path), public_key_pem=public_pem(key.public_key()),
                                          endorser="school-a"))

    # Refused lists change nothing but the subscription's error.
    for bad, reason in ((sign_list(doc(), Ed25519PrivateKey.generate()), "untrusted endorser"),
                        (sign_list(doc(expires_in=timedelta(seconds=-5)), key), "expired")):
        path.write_bytes(bad)
        with pytest.raises(ImageListRefused, match=reason):
            await sync_subscription(sqlite_sessions, "school-a")
        async with sqlite_sessions() as s:
            assert (await s.exec(select(Image))).all() == []
            sub = (await s.exec(select(ImageListSubscription))).one()
            assert reason in (sub.last_error or "")

    path.write_bytes(sign_list(doc("1", images=[image("img-1", "intro-linux", SHA512),
                                                 image("img-2", "databases", "cd" * 64)]), key))
    report = await sync_subscription(sqlite_sessions, "school-a")
    assert (report.added, report.updated, report.expired) == (2, 0, 0)
    async with sqlite_sessions() as s:
        rows = {i.name: i for i in (await s.exec(select(Image))).all()}
        assert rows["intro-linux"].sha512 == SHA512 and rows["intro-linux"].publisher == "school-a"
        assert rows["intro-linux"].visibility == "federation" and rows["intro-linux"].location.startswith("https://")
        sub = (await s.exec(select(ImageListSubscription))).one()
        assert sub.last_error is None and sub.identifier == "school-a-images" and sub.image_count == 2

    # Version 2: intro-linux has new bytes, databases was withdrawn.
    path.write_bytes(sign_list(doc("2", images=[image("img-1", "intro-linux", "ef" * 64)]), key))
    report = await sync_subscription(sqlite_sessions, "school-a")
    assert (report.added, report.expired) == (1, 1)
    async with sqlite_sessions() as s:
        rows = (await s.exec(select(Image))).all()
        states = sorted((i.name, i.sha512[:2], state_of(i)) for i in rows)
        assert states == [("databases", "cd", "expired"), ("intro-linux", "ab", "expired"),
                          ("intro-linux", "ef", "active")]

    # Replaying version 1 is refused even though it is validly signed.
    path.write_bytes(sign_list(doc("1"), key))
    with pytest.raises(ImageListRefused, match="replayed"):
        await sync_subscription(sqlite_sessions, "school-a")


async def test_a_remote_list_may_not_point_at_local_files(sqlite_sessions, key: Ed25519PrivateKey) -> None:
    async with session_scope(sqlite_sessions) as s:
        await subscribe(s, SubscriptionIn(name="remote", url="https://a.example/list",
                                          public_key_pem=public_pem(key.public_key())))
    signed = sign_list(doc(images=[image("img-1", "shadow", SHA512, **{"hv:uri": "file:///etc/shadow"})]), key)
    with pytest.raises(ImageListRefused, match="points at local files"):
        await sync_subscription(sqlite_sessions, "remote", data=signed)
    async with sqlite_sessions() as s:
        assert (await s.exec(select(Image))).all() == []
