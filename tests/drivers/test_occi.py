"""The OCCI client driver against a real partner broker (B, tests/drivers/occi_partner.py): B's query
interface as inventory, a compute's life over OCCI in both renderings, B's project scope applied to the
driver's credentials, and every refusal typed with B's words."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec

from metavmm.api import keys
from metavmm.api.app import create_app
from metavmm.api.auth import server_ssl_context
from metavmm.api.occi import routes
from metavmm.catalog.db import session_scope
from metavmm.catalog.models import ClientCertificate, Quota, Workload
from metavmm.drivers.occi import OcciDriver
from metavmm.drivers.registry import create_driver
from metavmm.foundation.config import parse_config
from metavmm.foundation.errors import (
    AuthError,
    ConfigError,
    ProviderNotFound,
    ProviderQuotaExceeded,
    ProviderUnavailable,
    ValidationError,
)
from metavmm.foundation.records import NetworkSpec, VmSpec, VmState, VolumeSpec
from metavmm.services.identity import get_or_create_project, get_or_create_user, set_membership
from metavmm.services.sync import sync_all
from tests.api.occi.conftest import publish_image
from tests.api.test_auth import _cert, _name, _write
from tests.drivers.occi_partner import IMAGE, PARTNER, Partner, partner  # noqa: F401

USER_DATA = "#cloud-config\nhostname: lesson-1\nwrite_files:\n  - path: /etc/motd\n    content: |\n" + \
    "      welcome to the partner's lab\n" * 300  # 10 KiB: more than one header line may carry (text/occi)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOccIoccIoccIoccIoccIoccIoccIoccIoccIoccIocc school@a"


def provider_yaml(url: str, *, name: str = "partner", token_env: str = "PARTNER_TOKEN", extra: str = "") -> str:
    return (f"{{name: {name}, kind: occi, endpoint: '{url}', region: school-b, "
            f"credentials: {{env: {token_env}}}{extra}}}")


def driver_for(url: str, extra: str = "", **kw: Any) -> OcciDriver:
    config = parse_config(f"providers:\n  - {provider_yaml(url, extra=extra, **kw)}\n")
    driver = create_driver(config.providers[0])
    assert isinstance(driver, OcciDriver)
    return driver


async def os_tpl(driver: OcciDriver) -> str:
    inv = await driver.inventory()
    return next(i.provider_image_id for i in inv.images if i.name == IMAGE)


@pytest.mark.parametrize("rendering", ["application/occi+json", "text/occi"])
async def test_inventory_a_computes_life_and_its_links_in_both_renderings(partner: Partner,  # noqa: F811
                                                                          rendering: str) -> None:
    driver = driver_for(partner.url, f", rendering: {rendering}")
    try:
        inv = await driver.inventory()
        assert driver.client.media == rendering
        assert [s.region for s in inv.sites] == ["school-b"] and inv.hosts == ()
        flavors = {f.name: f for f in inv.flavors}
        assert (flavors["sim.small"].vcpus, flavors["sim.small"].ram_mib) == (1, 2048)
        assert (flavors["sim.large"].vcpus, flavors["sim.large"].ram_mib) == (4, 16384)
        assert flavors["sim.small"].provider_flavor_id.endswith("resource_tpl#sim.small")
        image = next(i for i in inv.images if i.name == IMAGE)
        assert "os_tpl#" in image.provider_image_id and inv.vms == ()

        vm = await driver.create_vm(VmSpec(name="lesson-1", region="school-b", image=image.provider_image_id,
                                           flavor="sim.small", workload_id="wl-1", ssh_key=KEY,
                                           user_data=USER_DATA))
        assert vm.state in (VmState.PENDING, VmState.RUNNING) and vm.workload_id == "wl-1"
        vm = await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)
        assert vm.flavor == "sim.small" and vm.image == image.provider_image_id and vm.extra["vcpus"] == 1
        (row,) = await partner.workloads("x")  # B created it for project x, with what A asked
        assert row.id == vm.provider_vm_id and row.name == "lesson-1" and row.observed_state == "running"
        assert row.spec["ssh_key"] == KEY and row.spec["user_data"] == USER_DATA
        assert [v.provider_vm_id for v in await driver.list_vms()] == [vm.provider_vm_id]

        for verb, state, b_state in (("stop", VmState.STOPPED, "stopped"), ("start", VmState.RUNNING, "running"),
                                     ("suspend", VmState.SUSPENDED, "suspended"),
                                     ("start", VmState.RUNNING, "running"), ("restart", VmState.RUNNING, "running")):
            await getattr(driver, f"{verb}_vm")(vm.provider_vm_id)
            if verb == "restart":
                await partner.idle()
            assert (await driver.wait_for(vm.provider_vm_id, state)).state == state
            (row,) = await partner.workloads("x")
            assert row.observed_state == b_state, (verb, row.observed_state)

        await driver.stop_vm(vm.provider_vm_id)
        await driver.wait_for(vm.provider_vm_id, VmState.STOPPED)
        await driver.resize_vm(vm.provider_vm_id, vcpus=1, ram_mib=1024, flavor="sim.medium")
        await partner.idle()
        resized = await driver.get_vm(vm.provider_vm_id)
        assert (resized.extra["vcpus"], resized.extra["ram_mib"], resized.state) == (2, 4096, VmState.STOPPED)
        (row,) = await partner.workloads("x")
        assert (row.spec["vcpus"], row.spec["ram_mib"]) == (2, 4096)
        await driver.start_vm(vm.provider_vm_id)
        await driver.wait_for(vm.provider_vm_id, VmState.RUNNING)

        # storage, networks and their links to the compute
        vol = await driver.create_volume(VolumeSpec(name="homework", region="school-b", size_gib=2, workload_id="v-1"))
        net = await driver.create_network(NetworkSpec(name="lab", region="school-b", cidr="10.9.0.0/24",
                                                      workload_id="n-1"))
        await partner.idle()
        assert [(v.provider_volume_id, v.size_gib, v.workload_id, v.state) for v in await driver.list_volumes()] == [
            (vol.provider_volume_id, 2, "v-1", "available")]
        assert [(n.provider_network_id, n.cidr, n.workload_id) for n in await driver.list_networks()] == [
            (net.provider_network_id, "10.9.0.0/24", "n-1")]
        for _ in range(2):  # the second attach finds the link made by the first
            await driver.attach_volume(vm.provider_vm_id, vol.provider_volume_id)
            await driver.attach_network(vm.provider_vm_id, net.provider_network_id)
            await partner.idle()
        links = await partner.links()
        assert sorted(kind for kind, _, _ in links) == ["networkinterface", "storagelink"]
        assert {(s, t) for _, s, t in links} == {(vm.provider_vm_id, vol.provider_volume_id),
                                                  (vm.provider_vm_id, net.provider_network_id)}
        await driver.detach_volume(vm.provider_vm_id, vol.provider_volume_id)
        await driver.detach_network(vm.provider_vm_id, net.provider_network_id)
        await partner.idle()
        assert await partner.links() == []
        with pytest.raises(ProviderNotFound, match="has no link to storage"):
            await driver.detach_volume(vm.provider_vm_id, vol.provider_volume_id)
        for delete, rid in ((driver.delete_volume, vol.provider_volume_id),
                            (driver.delete_network, net.provider_network_id)):
            await delete(rid)
            await partner.idle()
        assert await driver.list_volumes() == [] and await driver.list_networks() == []
        await driver.delete_vm(vm.provider_vm_id)
        await partner.idle()
        assert await partner.workloads() == [] and await driver.list_vms() == []
        with pytest.raises(ProviderNotFound, match="answered 404"):
            await driver.get_vm(vm.provider_vm_id)
    finally:
        await driver.close()


async def test_partner_scope_applies_to_the_credentials(partner: Partner,  # noqa: F811
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("Y_TOKEN", partner.tokens["y"])
    as_x, as_y = driver_for(partner.url), driver_for(partner.url, name="as-y", token_env="Y_TOKEN")
    try:
        theirs = await as_y.create_vm(VmSpec(name="y-only", region="school-b", image=await os_tpl(as_y),
                                             flavor="sim.small", workload_id="wl-y"))
        assert [v.provider_vm_id for v in await as_y.list_vms()] == [theirs.provider_vm_id]
        more = [await as_y.create_vm(VmSpec(name=f"y-{i}", region="school-b", image=await os_tpl(as_y),
                                            flavor="sim.small", workload_id=f"wl-y{i}")) for i in range(2)]
        monkeypatch.setattr(routes, "DEFAULT_PAGE", 1)  # B pages every collection one entity a page
        as_y_text = driver_for(partner.url, ", rendering: text/occi", name="as-y-text", token_env="Y_TOKEN")
        for lister in (as_y, as_y_text):  # every page, followed by Link rel=next, in both renderings
            assert [v.provider_vm_id for v in await lister.list_vms()] == [
                theirs.provider_vm_id, *(m.provider_vm_id for m in more)]
        await as_y_text.close()
        assert await as_x.list_vms() == [] and (await as_x.inventory()).vms == ()
        assert as_x.client.media == "application/occi+json"  # negotiated: B renders JSON (templates carry sizes)
        for call in (as_x.get_vm(theirs.provider_vm_id), as_x.stop_vm(theirs.provider_vm_id),
                     as_x.delete_vm(theirs.provider_vm_id)):
            with pytest.raises(ProviderNotFound, match="in project x"):
                await call
        await partner.idle()
        assert theirs.provider_vm_id in [w.id for w in await partner.workloads("y")]  # untouched
    finally:
        await as_x.close()
        await as_y.close()


async def test_refusals_are_typed_and_name_the_reference_not_the_secret(partner: Partner,  # noqa: F811
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRONG_TOKEN", "mvm_not-a-token-of-b")
    wrong = driver_for(partner.url, token_env="WRONG_TOKEN")
    with pytest.raises(AuthError) as refused:
        await wrong.inventory()
    assert "refused the credentials (token from env:WRONG_TOKEN)" in str(refused.value)
    assert "mvm_not-a-token-of-b" not in str(refused.value)
    await wrong.close()

    monkeypatch.setenv("BASIC_PASSWORD", partner.tokens["x"])  # B takes its API token as the Basic password
    basic = driver_for(partner.url, ", auth: basic, user: school-x", token_env="BASIC_PASSWORD")
    assert {f.name for f in (await basic.inventory()).flavors} >= {"sim.small", "sim.medium"}
    with pytest.raises(ValidationError, match="no resource_tpl 'huge'"):
        await basic.create_vm(VmSpec(name="v", region="school-b", image=await os_tpl(basic), flavor="huge"))
    with pytest.raises(ValidationError, match="no os_tpl 'nope'"):
        await basic.create_vm(VmSpec(name="v", region="school-b", image="nope", flavor="sim.small"))
    async with session_scope(partner.app[keys.SESSIONS]) as s:  # B's quota for project x applies to A
        s.add(Quota(project_id=partner.projects["x"], resource="instances", limit=0))
    with pytest.raises(ProviderQuotaExceeded, match="answered 403: quota exceeded"):
        await basic.create_vm(VmSpec(name="v", region="school-b", image=await os_tpl(basic), flavor="sim.small"))
    assert await partner.workloads("x") == []
    await basic.close()

    monkeypatch.delenv("UNSET_TOKEN", raising=False)
    unset = driver_for(partner.url, token_env="UNSET_TOKEN")
    with pytest.raises(AuthError, match="UNSET_TOKEN is not set"):
        await unset.inventory()
    gone = driver_for("http://127.0.0.1:9/occi")  # nothing listens on the discard port
    refused = r"cannot reach the OCCI endpoint http://127\.0\.0\.1:9/occi/-/: connection refused"
    with pytest.raises(ProviderUnavailable, match=refused):
        await gone.inventory()
    await gone.close()
    with pytest.raises(ConfigError, match="auth basic needs user"):
        parse_config(f"providers:\n  - {provider_yaml(partner.url, extra=', auth: basic')}\n")


async def test_x509_client_certificate(tmp_path: Path) -> None:
    """B serves HTTPS and maps a client certificate's subject to a member of project x (no token at all)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(_name("partner CA"), _name("partner CA"), ca_key, ca_key, ca=True)
    ca_file, _ = _write(tmp_path / "ca", ca, ca_key)
    server_key, school_key, stranger_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    server = _write(tmp_path / "server", _cert(_name("b"), _name("partner CA"), server_key, ca_key, san="127.0.0.1"),
                    server_key)
    school = _write(tmp_path / "school", _cert(_name("school-a"), _name("partner CA"), school_key, ca_key), school_key)
    stranger = _write(tmp_path / "stranger", _cert(_name("someone"), _name("partner CA"), stranger_key, ca_key),
                      stranger_key)
    config = parse_config(PARTNER + f"""
auth:
  tls: {{cert_file: '{server[0]}', key_file: '{server[1]}'}}
  client_certs: {{enabled: true, ca_file: '{ca_file}'}}
""")
    app = create_app(config, f"sqlite:///{tmp_path / 'b.db'}", sync=False)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ssl_context(config.auth))
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        await sync_all(app[keys.SESSIONS], config)
        await publish_image(app, IMAGE)
        async with session_scope(app[keys.SESSIONS]) as s:
            x = await get_or_create_project(s, "x")
            user = await get_or_create_user(s, "school-a")
            await set_membership(s, user.id, x.id, "member")
            s.add(ClientCertificate(subject=_name("school-a").rfc4514_string(), user_id=user.id, project_id=x.id))

        def by_cert(cert: tuple[str, str]) -> OcciDriver:
            entry = (f"{{name: partner, kind: occi, endpoint: 'https://127.0.0.1:{port}/', region: school-b, "
                     f"auth: x509, client_cert: '{cert[0]}', client_key: '{cert[1]}', ca_bundle: '{ca_file}'}}")
            return create_driver(parse_config(f"providers:\n  - {entry}\n").providers[0])  # type: ignore[return-value]

        mine = by_cert(school)
        vm = await mine.create_vm(VmSpec(name="by-cert", region="school-b", image=await os_tpl(mine),
                                         flavor="sim.small", workload_id="wl-x509"))
        async with app[keys.SESSIONS]() as s:
            row = await s.get(Workload, vm.provider_vm_id)
        assert row is not None and row.project_id == x.id and row.name == "by-cert"
        await mine.close()
        theirs = by_cert(stranger)
        with pytest.raises(AuthError, match=r"client certificate .*stranger\.crt.*not mapped to a user"):
            await theirs.inventory()
        await theirs.close()
    finally:
        await runner.cleanup()
