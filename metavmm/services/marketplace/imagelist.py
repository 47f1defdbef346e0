"""Signed image lists between sites, in the spirit of the HEPiX image lists research clouds replicate.

A list is a JSON document naming its endorser, its creation and expiry dates, a version, and the images
it endorses with their URIs, sizes and SHA-512 (and SHA-256) checksums, using HEPiX's key names
(``hv:imagelist``, ``dc:identifier``, ``dc:date:expires``, ``hv:images``, ``sl:checksum:sha512`` ...).
HEPiX signs with S/MIME; we sign the exact document bytes with Ed25519 and ship them in an envelope::

    {"format": "metavmm-imagelist/1",
     "payload": "<base64 of the list's JSON bytes>",
     "signature": {"alg": "Ed25519", "key_id": "<sha256 of the public key>", "value": "<base64>"}}

Signing the bytes (not a re-serialisation) means there is no canonical-JSON step to get wrong: what was
signed is exactly what is parsed. A subscriber pins the endorser's public key and :func:`verify_list`
refuses, with the reason, a list that is unsigned, signed by another key, altered after signing,
expired, not yet valid, older than the one already imported (a replay), or for another identifier.
Nothing is parsed for import before the signature has verified.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as PydanticError

from metavmm.foundation.errors import ImageListRefused, ValidationError
from metavmm.services.marketplace.entries import version_key

ENVELOPE_FORMAT = "metavmm-imagelist/1"
MAX_LIST_BYTES = 16 << 20
CLOCK_SKEW = timedelta(minutes=5)


# --- keys -----------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """How a list names its signer: SHA-256 of the public key's SubjectPublicKeyInfo DER."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM,
                                   serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    except ValueError as exc:
        raise ValidationError(f"not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ValidationError(f"endorser keys must be Ed25519, not {type(key).__name__}")
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise ValidationError(f"cannot read signing key {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValidationError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValidationError(f"{path}: signing keys must be Ed25519")
    return key


def generate_key(private_path: str | Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair: the private key (mode 0600) and ``<name>.pub`` beside it."""
    private_path = Path(private_path)
    if private_path.exists():
        raise ValidationError(f"{private_path} exists: refusing to overwrite a signing key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path = private_path.with_name(private_path.name + ".pub")
    public_path.write_text(public_pem(key.public_key()))
    return private_path, public_path


# --- the document ---------------------------------------------------------------------------------


class _Doc(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="allow")


class ListedImage(_Doc):
    """One endorsed image (HEPiX ``hv:image``)."""

    identifier: str = Field(alias="dc:identifier", min_length=1, max_length=255)
    title: str = Field(alias="dc:title", min_length=1, max_length=255)
    description: str = Field(default="", alias="dc:description")
    uri: str = Field(alias="hv:uri", pattern=r"^(https?|file)://")
    size: int = Field(alias="hv:size", ge=0)
    sha512: str = Field(alias="sl:checksum:sha512", pattern=r"^[0-9a-f]{128}$")
    sha256: str | None = Field(default=None, alias="sl:checksum:sha256", pattern=r"^[0-9a-f]{64}$")
    version: str = Field(default="1", alias="hv:version")
    format: str = Field(alias="hv:format")
    arch: str = Field(default="x86_64", alias="sl:arch")
    os: str | None = Field(default=None, alias="sl:osname")
    os_version: str | None = Field(default=None, alias="sl:osversion")
    hypervisor: str | None = Field(default=None, alias="hv:hypervisor")
    virtual_size: int = Field(default=0, alias="hv:virtualsize", ge=0)
    tags: list[str] = Field(default_factory=list, alias="metavmm:tags")
    access_ports: list[str] = Field(default_factory=list, alias="metavmm:access_ports")
    min_vcpus: int = Field(default=1, alias="metavmm:min_vcpus", ge=1)
    min_ram_mib: int = Field(default=0, alias="metavmm:min_ram_mib", ge=0)
    min_disk_gib: int = Field(default=0, alias="metavmm:min_disk_gib", ge=0)
    expires: datetime | None = Field(default=None, alias="dc:date:expires")


class ImageEntry(_Doc):
    image: ListedImage = Field(alias="hv:image")


class Endorser(_Doc):
    creator: str = Field(alias="dc:creator", min_length=1)
    email: str | None = Field(default=None, alias="hv:email")


class ImageListDoc(_Doc):
    """The list itself (HEPiX ``hv:imagelist``)."""

    identifier: str = Field(alias="dc:identifier", min_length=1, max_length=255)
    title: str = Field(default="", alias="dc:title")
    description: str = Field(default="", alias="dc:description")
    created: datetime = Field(alias="dc:date:created")
    expires: datetime = Field(alias="dc:date:expires")
    version: str = Field(alias="hv:version", min_length=1)
    uri: str | None = Field(default=None, alias="hv:uri")
    endorser: Endorser = Field(alias="hv:endorser")
    images: list[ImageEntry] = Field(default_factory=list, alias="hv:images")

    def to_json(self) -> dict[str, Any]:
        return {"hv:imagelist": self.model_dump(mode="json", by_alias=True, exclude_none=True)}


# --- signing and verifying ------------------------------------------------------------------------


def sign_list(doc: ImageListDoc, private_key: Ed25519PrivateKey) -> bytes:
    """The signed envelope of ``doc``, ready to publish."""
    payload = json.dumps(doc.to_json(), indent=1, sort_keys=True).encode()
    signature = private_key.sign(payload)
    envelope = {
        "format": ENVELOPE_FORMAT,
        "payload": base64.b64encode(payload).decode(),
        "signature": {"alg": "Ed25519", "key_id": key_id(private_key.public_key()),
                      "value": base64.b64encode(signature).decode()},
    }
    return json.dumps(envelope, indent=1).encode()


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ImageListRefused(f"{what} is missing or not text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ImageListRefused(f"{what} is not base64") from None


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def verify_list(data: bytes, trusted_key: Ed25519PublicKey, *, now: datetime | None = None,
                identifier: str | None = None, endorser: str | None = None,
                not_older_than: str | None = None) -> ImageListDoc:
    """The list, if and only if it is signed by ``trusted_key``, intact, current and the one expected."""
    if len(data) > MAX_LIST_BYTES:
        raise ImageListRefused(f"image list of {len(data)} bytes is over the limit of {MAX_LIST_BYTES}")
    try:
        envelope = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ImageListRefused("not a signed image list: the file is not JSON") from None
    if not isinstance(envelope, dict) or "signature" not in envelope or "hv:imagelist" in envelope:
        raise ImageListRefused("unsigned image list: refused (only lists signed by a trusted endorser are imported)")
    if envelope.get("format") != ENVELOPE_FORMAT:
        raise ImageListRefused(f"unknown image list format {envelope.get('format')!r} (expected {ENVELOPE_FORMAT})")
    sig = envelope["signature"]
    if not isinstance(sig, dict) or sig.get("alg") != "Ed25519":
        raise ImageListRefused("image list signature: only Ed25519 signatures are accepted")
    expected_id = key_id(trusted_key)
    if sig.get("key_id") != expected_id:
        raise ImageListRefused(f"image list signed by key {str(sig.get('key_id'))[:16]}..., not the endorser's "
                               f"trusted key {expected_id[:16]}...: untrusted endorser, refused")
    payload = _b64(envelope.get("payload"), "image list payload")
    try:
        trusted_key.verify(_b64(sig.get("value"), "image list signature"), payload)
    except InvalidSignature:
        raise ImageListRefused("image list signature does not verify: the list was altered after signing "
                               "(tampered), refused") from None
    try:
        doc = ImageListDoc.model_validate(json.loads(payload)["hv:imagelist"])
    except (json.JSONDecodeError, KeyError, TypeError, PydanticError) as exc:
        raise ImageListRefused(f"signed image list is malformed: {str(exc)[:300]}") from None
    now = now or datetime.now(UTC)
    expires, created = _aware(doc.expires), _aware(doc.created)
    if expires <= now:
        raise ImageListRefused(f"image list {doc.identifier} expired at {expires.isoformat()}: refused")
    if created > now + CLOCK_SKEW:
        raise ImageListRefused(f"image list {doc.identifier} is dated in the future ({created.isoformat()}): refused")
    if identifier and doc.identifier != identifier:
        raise ImageListRefused(f"image list is {doc.identifier!r}, not the subscribed {identifier!r}: refused")
    if endorser and doc.endorser.creator != endorser:
        raise ImageListRefused(f"image list endorsed by {doc.endorser.creator!r}, not {endorser!r}: refused")
    if not_older_than and version_key(doc.version) < version_key(not_older_than):
        raise ImageListRefused(f"image list version {doc.version} is older than the imported {not_older_than}: "
                               "a replayed list, refused")
    return doc
