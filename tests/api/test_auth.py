"""Authentication: API tokens (Bearer and Basic), OIDC against a local issuer with its own keys,
X.509 client certificates over real TLS; and no credential ever reaches a log."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import ssl
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.auth import server_ssl_context
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import ClientCertificate
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import ConfigError
from metavmm.services.identity import get_or_create_project, get_or_create_user, set_membership
from tests.world import SIM, seed

API = "/api/v1"


async def test_missing_bad_expired_and_basic_tokens(world: Any) -> None:
    client, w = world
    none = await client.get(f"{API}/workloads")
    assert none.status == 401 and none.content_type == "application/problem+json"
    assert "Bearer" in none.headers["WWW-Authenticate"]
    for header in ("Bearer mvm_not-a-real-token", "Bearer " + w.tokens["expired"], "Digest abc", "Basic !!!"):
        resp = await client.get(f"{API}/workloads", headers={"Authorization": header})
        assert resp.status == 401, header
    basic = base64.b64encode(f"anyone:{w.tokens['alpha_reader']}".encode()).decode()
    ok = await client.get(f"{API}/whoami", headers={"Authorization": f"Basic {basic}"})
    assert ok.status == 200 and (await ok.json())["role"] == "reader"
    public = await client.get(f"{API}/openapi.json")
    assert public.status == 200
    assert (await client.get("/healthz")).status == 200


async def test_no_credential_reaches_the_log(world: Any, caplog: pytest.LogCaptureFixture) -> None:
    client, w = world
    caplog.set_level(logging.DEBUG)
    secret = w.tokens["alpha_member"]
    await client.get(f"{API}/workloads", headers={"Authorization": f"Bearer {secret}"})
    await client.get(f"{API}/workloads", headers={"Authorization": f"Bearer {secret}x"})
    await client.get(f"{API}/workloads", headers={"Authorization": f"Bearer {w.tokens['expired']}"})
    await client.post(f"{API}/providers", headers=w.auth("admin"),
                      json={"name": "p1", "kind": "aws", "credentials": {"secret_key": "AKIA-very-secret"}})
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "refused GET /api/v1/workloads" in logged
    for value in (secret, w.tokens["expired"], "AKIA-very-secret"):
        assert value not in logged


# --- OIDC -------------------------------------------------------------------------------------------


class Issuer:
    """A local OpenID provider: a discovery document and a JWKS with an RSA and an EC key."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.url = ""
        self.jwks_hits = 0

    def jwks(self) -> dict[str, Any]:
        keys_ = []
        for kid, key, alg in (("rsa1", self.rsa, jwt.algorithms.RSAAlgorithm),
                              ("ec1", self.ec, jwt.algorithms.ECAlgorithm)):
            jwk = json.loads(alg.to_jwk(key.public_key()))
            keys_.append({**jwk, "kid": kid, "use": "sig"})
        return {"keys": keys_}

    def app(self) -> web.Application:
        async def discovery(_r: web.Request) -> web.Response:
            return web.json_response({"issuer": self.url, "jwks_uri": self.url + "/jwks",
                                      "token_endpoint": self.url + "/token"})  # served by a subclass that has one

        async def jwks(_r: web.Request) -> web.Response:
            self.jwks_hits += 1
            return web.json_response(self.jwks())

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        return app

    def token(self, sub: str, *, aud: str = "metavmm", exp_in: int = 300, kid: str = "rsa1", **claims: Any) -> str:
        now = dt.datetime.now(dt.UTC)
        body = {"iss": self.url, "aud": aud, "sub": sub, "iat": now, "exp": now + dt.timedelta(seconds=exp_in),
                **claims}
        key, alg = (self.rsa, "RS256") if kid.startswith("rsa") else (self.ec, "ES256")
        return jwt.encode(body, key, algorithm=alg, headers={"kid": kid})


async def oidc_user(app: web.Application, name: str, subject: str, roles: dict[str, str]) -> None:
    """A user the issuer knows by ``subject``, with a role in each named project."""
    async with session_scope(app[keys.SESSIONS]) as s:
        user = await get_or_create_user(s, name)
        user.oidc_subject = subject
        s.add(user)
        for project, role in roles.items():
            await set_membership(s, user.id, (await get_or_create_project(s, project)).id, role)


async def test_oidc_tokens_from_a_local_issuer(aiohttp_client: Any, aiohttp_server: Any, sqlite_url: str) -> None:
    issuer = Issuer()
    server = await aiohttp_server(issuer.app(), host="127.0.0.1")
    issuer.url = str(server.make_url("")).rstrip("/")
    cfg = parse_config(SIM + f"""
auth:
  oidc: {{issuer: "{issuer.url}", audience: metavmm, leeway_s: 0, project_claim: project}}
""")
    app = create_app(cfg, sqlite_url, sync=False)
    client = await aiohttp_client(app)
    await seed(app)
    await oidc_user(app, "carol", "sub-carol", {"alpha": "member", "beta": "reader"})

    def bearer(tok: str, project: str | None = "alpha") -> dict[str, str]:
        return {"Authorization": f"Bearer {tok}", **({"X-Metavmm-Project": project} if project else {})}

    me = await client.get(f"{API}/whoami", headers=bearer(issuer.token("sub-carol")))
    assert me.status == 200, await me.text()
    assert await me.json() == {**(await me.json()), "user": "carol", "project": "alpha", "role": "member",
                               "via": "oidc"}
    ec_signed = await client.get(f"{API}/whoami", headers=bearer(issuer.token("sub-carol", kid="ec1"), "beta"))
    assert (await ec_signed.json())["role"] == "reader"
    by_claim = await client.get(f"{API}/whoami", headers=bearer(issuer.token("sub-carol", project="beta"), None))
    assert (await by_claim.json())["project"] == "beta"
    not_member = await client.get(f"{API}/whoami", headers=bearer(issuer.token("sub-carol"), "ops"))
    assert not_member.status == 403
    ambiguous = await client.get(f"{API}/whoami", headers=bearer(issuer.token("sub-carol"), None))
    assert ambiguous.status == 403 and "X-Metavmm-Project" in (await ambiguous.json())["detail"]
    for bad, why in ((issuer.token("sub-carol", exp_in=-5), "expired"),
                     (issuer.token("sub-carol", aud="someone-else"), "audience"),
                     (issuer.token("sub-carol", kid="rsa-unknown"), "key")):
        resp = await client.get(f"{API}/whoami", headers=bearer(bad))
        assert resp.status == 401, why
        assert why in (await resp.json())["detail"].lower()
    forged_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode({"iss": issuer.url, "aud": "metavmm", "sub": "sub-carol",
                         "exp": dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)}, forged_key, algorithm="RS256",
                        headers={"kid": "rsa1"})
    assert (await client.get(f"{API}/whoami", headers=bearer(forged))).status == 401
    newcomer = await client.get(f"{API}/whoami", headers=bearer(issuer.token("sub-dave", preferred_username="dave")))
    assert newcomer.status == 403  # created on first login, but a member of nothing yet
    assert issuer.jwks_hits <= 2  # cached; one refetch for the unknown key id


# --- X.509 client certificates ----------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    """Conventional order (country first in DER), so RFC 4514 reads CN=...,O=NCHC,C=TW."""
    return x509.Name([x509.NameAttribute(NameOID.COUNTRY_NAME, "TW"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "NCHC"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: x509.Name, issuer: x509.Name, key: Any, signer: Any, *, ca: bool = False,
          san: str | None = None) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=1))
         .not_valid_after(now + dt.timedelta(hours=1))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address(san))]),
                            critical=False)
    return b.sign(signer, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: Any) -> tuple[str, str]:
    crt, pem = path.with_suffix(".crt"), path.with_suffix(".key")
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


async def _whoami_over_tls(tmp_path: Path, sqlite_url: str, clients: dict[str, x509.Name],
                           mapped: str) -> dict[str | None, tuple[int, dict[str, Any]]]:
    """Serve the broker over real TLS with client certificates, map ``mapped`` to alice in alpha, and
    ask /whoami once per client certificate (and once without one): name -> (status, body)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("metavmm test CA")
    ca = _cert(ca_name, ca_name, ca_key, ca_key, ca=True)
    ca_file, _ = _write(tmp_path / "ca", ca, ca_key)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_crt, server_pem = _write(tmp_path / "server", _cert(_name("broker"), ca_name, server_key, ca_key,
                                                               san="127.0.0.1"), server_key)
    files = {}
    for i, (who, subject) in enumerate(clients.items()):
        k = ec.generate_private_key(ec.SECP256R1())
        files[who] = _write(tmp_path / f"client{i}", _cert(subject, ca_name, k, ca_key), k)

    cfg = parse_config(SIM + f"""
auth:
  tls: {{cert_file: '{server_crt}', key_file: '{server_pem}'}}
  client_certs: {{enabled: true, ca_file: '{ca_file}'}}
""")
    app = create_app(cfg, sqlite_url, sync=False)
    sctx = server_ssl_context(cfg.auth)  # what `metavmm serve` listens with
    assert sctx is not None
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=sctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    answers: dict[str | None, tuple[int, dict[str, Any]]] = {}
    try:
        async with session_scope(app[keys.SESSIONS]) as s:
            alpha = await get_or_create_project(s, "alpha")
            alice = await get_or_create_user(s, "alice")
            await set_membership(s, alice.id, alpha.id, "member")
            s.add(ClientCertificate(subject=mapped, user_id=alice.id, project_id=alpha.id))
        for who in [*clients, None]:
            cctx = ssl.create_default_context(cafile=ca_file)
            if who:
                cctx.load_cert_chain(*files[who])
            async with aiohttp.ClientSession() as http, http.get(f"https://127.0.0.1:{port}{API}/whoami",
                                                                 ssl=cctx) as resp:
                answers[who] = resp.status, await resp.json()
    finally:
        await runner.cleanup()
    return answers


async def test_client_certificates_over_tls(tmp_path: Path, sqlite_url: str) -> None:
    assert _name("alice").rfc4514_string() == "CN=alice,O=NCHC,C=TW"
    answers = await _whoami_over_tls(tmp_path, sqlite_url, {"alice": _name("alice"), "mallory": _name("mallory")},
                                     "CN=alice,O=NCHC,C=TW")
    status, body = answers["alice"]
    assert status == 200, body
    assert body["user"] == "alice" and body["via"] == "x509" and body["role"] == "member"
    status, body = answers["mallory"]
    assert status == 401 and "not mapped" in body["detail"]
    assert answers[None][0] == 401


async def test_a_crafted_subject_does_not_impersonate(tmp_path: Path, sqlite_url: str) -> None:
    """A CA that signs whatever CN is asked for must not let ``CN=alice,O=NCHC`` (one attribute, a comma
    in its value) pass for the subject CN=alice,O=NCHC,C=TW; nor may extra or reordered attributes."""
    tw = x509.NameAttribute(NameOID.COUNTRY_NAME, "TW")
    forged = {
        "comma": x509.Name([tw, x509.NameAttribute(NameOID.COMMON_NAME, "alice,O=NCHC")]),
        "plus": x509.Name([tw, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "NCHC"),
                           x509.NameAttribute(NameOID.COMMON_NAME, "alice+OU=x")]),
        "extra": x509.Name([tw, x509.NameAttribute(NameOID.ORGANIZATION_NAME, "NCHC"),
                            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x"),
                            x509.NameAttribute(NameOID.COMMON_NAME, "alice")]),
        "alice": _name("alice"),
    }
    answers = await _whoami_over_tls(tmp_path, sqlite_url, forged, "CN=alice,O=NCHC,C=TW")
    for who in ("comma", "plus", "extra"):
        status, body = answers[who]
        assert status == 401 and "not mapped" in body["detail"], (who, body)
    assert answers["alice"][0] == 200


async def test_mapped_subjects_are_stored_canonical(world: Any) -> None:
    """The REST mapping parses the subject and stores cryptography's spelling (OIDs and hex escapes
    resolved), so an equal name written differently is the same mapping; garbage is a 400."""
    client, w = world
    url = f"{API}/users/{w.ids['user_alpha_member']}/certificates"
    ok = await client.post(url, headers=w.auth("admin"),
                           json={"subject": "2.5.4.3=al\\69ce,O=NCHC,C=TW", "project_id": w.ids["alpha"]})
    assert ok.status == 201, await ok.text()
    assert (await ok.json())["subject"] == "CN=alice,O=NCHC,C=TW"
    again = await client.post(url, headers=w.auth("admin"),
                              json={"subject": "CN=alice,O=NCHC,C=TW", "project_id": w.ids["alpha"]})
    assert again.status == 409
    bad = await client.post(url, headers=w.auth("admin"), json={"subject": "no equals sign", "project_id": 1})
    assert bad.status == 400 and "RFC 4514" in (await bad.json())["detail"]


def test_tls_settings_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"needs auth\.tls"):
        server_ssl_context(parse_config("auth: {client_certs: {enabled: true, ca_file: /x}}").auth)
    with pytest.raises(ConfigError, match="cannot load"):
        server_ssl_context(parse_config(f"auth: {{tls: {{cert_file: {tmp_path}/no, key_file: /no}}}}").auth)
    with pytest.raises(ConfigError, match="ca_file"):
        parse_config("auth: {client_certs: {enabled: true}}")
    assert server_ssl_context(parse_config("").auth) is None
