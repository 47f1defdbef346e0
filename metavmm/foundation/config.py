"""The federation file: providers, sites, credentials by reference, on-prem prices, policies.

The file is YAML, validated by pydantic models with ``extra="forbid"`` so a typo is an error, never a
silently ignored key. Errors name the file, the line, the key path and what was expected, e.g.::

    config/default.yaml:7: providers[0].endpont: unknown key (did you mean 'endpoint'?)

Line numbers come from the YAML node tree (``yaml.compose``), matched to pydantic's error location.
Each provider kind has its own model, chosen by ``kind`` (a discriminated union), so an OpenStack
entry is checked for what OpenStack needs.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar
from urllib.parse import urlsplit

import pydantic
import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from metavmm.foundation.currencies import normalise_currency
from metavmm.foundation.errors import ConfigError
from metavmm.foundation.kinds import KINDS
from metavmm.foundation.prices import PriceUnit, check_tables

M = TypeVar("M", bound=BaseModel)

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "config" / "default.yaml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CredentialRef(_Strict):
    """Where a secret lives. The broker stores and logs only this reference, never the secret."""

    env: str | None = Field(default=None, description="name of an environment variable")
    file: str | None = Field(default=None, description="path of a file holding the secret")
    profile: str | None = Field(default=None, description="a named profile of the provider's own tooling")

    @model_validator(mode="after")
    def _exactly_one(self) -> CredentialRef:
        given = [k for k in ("env", "file", "profile") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError("give exactly one of env, file or profile")
        return self

    def reference(self) -> str:
        for key in ("env", "file", "profile"):
            if value := getattr(self, key):
                return f"{key}:{value}"
        raise AssertionError("unreachable")

    def resolve(self) -> str:
        """Read the secret. Raises ConfigError naming the reference (not the value) when missing."""
        if self.env:
            value = os.environ.get(self.env)
            if value is None:
                raise ConfigError(f"credentials: environment variable {self.env} is not set")
            return value
        if self.file:
            path = Path(self.file).expanduser()
            try:
                return path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"credentials: cannot read {path}: {exc.strerror}") from None
        return self.profile or ""

    def __repr__(self) -> str:
        return f"CredentialRef({self.reference()})"


class CloneNetwork(_Strict):
    """The IPv4 network a site gives migrated clones: each gets an address of ``cidr`` that no other
    workload holds (never the network, broadcast, gateway or DNS addresses), set statically in the guest
    by cloud-init. A site without one leaves the clone to DHCP."""

    cidr: ipaddress.IPv4Network = Field(description="e.g. 10.20.0.0/24 (host bits must be zero)")
    gateway: ipaddress.IPv4Address | None = Field(default=None, description="the default route, inside cidr")
    dns: list[ipaddress.IPv4Address] = Field(default_factory=list, max_length=8)

    @model_validator(mode="after")
    def _inside(self) -> CloneNetwork:
        if self.cidr.prefixlen > 30:
            raise ValueError(f"cidr {self.cidr} is too small for clones: use a /30 or larger")
        if self.gateway is not None:
            if self.gateway not in self.cidr:
                raise ValueError(f"gateway {self.gateway} is outside cidr {self.cidr}")
            if self.gateway in (self.cidr.network_address, self.cidr.broadcast_address):
                raise ValueError(f"gateway {self.gateway} is the network or broadcast address of {self.cidr}")
        return self


class SiteConfig(_Strict):
    """A region of a provider; ``country`` (ISO 3166 alpha-2) feeds data-residency rules."""

    name: str | None = Field(default=None, description="federation-wide site name; default provider/region")
    region: str
    country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    location: str | None = None
    zones: list[str] = Field(default_factory=list)
    clone_network: CloneNetwork | None = Field(default=None, description="addresses for migrated clones")


class OcciOidc(_Strict):
    """Where an OCCI client gets its bearer tokens: an OpenID Connect issuer that the partner trusts (EGI
    Check-in, a Keycloak realm). Access tokens expire, so the driver fetches one with the grant below and
    again before it runs out; the provider's ``credentials`` hold the grant's secret (the client secret, or
    the refresh token)."""

    issuer: str = Field(pattern=r"^https?://[^\s]+$", description="the issuer URL (discovery is read from it)")
    token_endpoint: str | None = Field(default=None, pattern=r"^https?://[^\s]+$", description="default: discovery")
    client_id: str = Field(min_length=1, max_length=255)
    grant: Literal["client_credentials", "refresh_token"] = Field(
        default="client_credentials", description="client_credentials: credentials hold the client secret; "
        "refresh_token: credentials hold a refresh token (a public client's, as oidc-agent keeps one)")
    scope: str | None = Field(default=None, max_length=1000, description="e.g. 'openid eduperson_entitlement'")
    audience: str | None = Field(default=None, max_length=255, description="the `audience` parameter, where the "
                                 "issuer needs it to put the partner in the token's `aud`")


class _ProviderBase(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    enabled: bool = True
    on_prem: bool = True
    credentials: CredentialRef | None = None
    sites: list[SiteConfig] = Field(default_factory=list)


class LibvirtProvider(_ProviderBase):
    kind: Literal["libvirt"]
    endpoint: str = Field(default="qemu:///system", description="libvirt connection URI")
    domain_type: Literal["qemu", "kvm"] = "qemu"
    storage_dir: str | None = Field(default=None, description="where the broker keeps this provider's disks")


class OpenStackProvider(_ProviderBase):
    kind: Literal["openstack"]
    cloud: str = Field(description="the cloud's name in clouds.yaml")
    regions: list[str] = Field(default_factory=list, description="regions to use; default: all")
    compute_api_version: str | None = None
    compute_endpoint_override: str | None = None
    snapshot_timeout_s: float = Field(600, gt=0, description="how long nova may take to upload a server snapshot "
                                      "to glance (a DR replication or failback from this provider reads one)")


class VmwareProvider(_ProviderBase):
    kind: Literal["vmware"]
    endpoint: str = Field(description="vCenter host[:port]")
    user: str
    datacenter: str | None = None
    verify_tls: bool = True


class AwsProvider(_ProviderBase):
    kind: Literal["aws"]
    on_prem: bool = False
    regions: list[str] = Field(min_length=1)
    endpoint_url: str | None = None


class GcpProvider(_ProviderBase):
    kind: Literal["gcp"]
    on_prem: bool = False
    project: str
    zones: list[str] = Field(min_length=1)
    endpoint: str | None = None
    image_projects: list[str] = Field(default_factory=list, description="public image projects to list, e.g. "
                                      "debian-cloud (their images and families become launchable)")
    anonymous: bool = Field(default=False, description="no credentials: only for a test endpoint")
    image_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$",
                                     description="Cloud Storage bucket an image import is uploaded through "
                                     "(GCE reads raw disks only from there); without it imports are refused")
    storage_endpoint: str | None = Field(default=None, description="Cloud Storage JSON API URL; default "
                                         "https://storage.googleapis.com (a test server's URL in tests)")


class AzureProvider(_ProviderBase):
    kind: Literal["azure"]
    on_prem: bool = False
    subscription_id: str
    resource_group: str
    locations: list[str] = Field(min_length=1)
    endpoint: str | None = Field(default=None, description="Resource Manager URL; default Azure's public cloud")
    tenant_id: str | None = Field(default=None, description="with client_id: credentials hold the client secret")
    client_id: str | None = None
    ca_bundle: str | None = Field(default=None, description="PEM file the endpoint's certificate is checked against")
    poll_interval_s: float = Field(default=5.0, gt=0, description="pause between looks at a long-running operation")
    public_ip: bool = Field(default=False, description="give each VM a public IP address")
    deallocate_on_stop: bool = Field(default=True, description="stop deallocates (billing stops); else power off")
    admin_user: str = "metavmm"


class OcciProvider(_ProviderBase):
    """A partner's OCCI 1.2 site (another metavmm, or any OCCI endpoint) as one site of the federation."""

    kind: Literal["occi"]
    on_prem: bool = False
    endpoint: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$", description="the partner's OCCI root URL")
    region: str = Field(default="partner", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$",
                        description="the name of the partner's one site in this federation")
    auth: Literal["token", "basic", "x509", "oidc"] = Field(
        default="token", description="token: credentials hold a bearer token (a partner metavmm's API token); "
        "basic: user and credentials (the password); x509: client_cert and client_key; oidc: access tokens "
        "fetched from the issuer in `oidc` with credentials as the grant's secret")
    oidc: OcciOidc | None = Field(default=None, description="the issuer the partner takes bearer tokens from")
    user: str | None = Field(default=None, description="the Basic user name")
    client_cert: str | None = Field(default=None, description="PEM file of the X.509 client certificate")
    client_key: str | None = Field(default=None, description="PEM file of its key (default: in client_cert)")
    ca_bundle: str | None = Field(default=None, description="PEM file the partner's certificate is checked against")
    verify_tls: bool = True
    rendering: Literal["auto", "application/occi+json", "text/occi", "text/plain"] = Field(
        default="auto", description="auto: JSON where the partner offers it, else text/occi")
    timeout_s: float = Field(default=30.0, gt=0, le=600, description="per request")
    price_api: str = Field(
        default="auto", pattern=r"^(auto|off|https?://[^\s]+)$",
        description="where the partner publishes its prices, read on every sync with the same credentials: auto: "
        "a metavmm partner's `api/v1/federation/prices` under the endpoint (a partner without one, 404, is "
        "priced by this file only), unless `prices` in this file prices the provider (an agreement wins); "
        "off: never; or the URL of the price API")
    image_upload: bool = Field(
        default=False, description="the partner is a metavmm that takes disks as new os_tpls (the os_tpl upload "
        "extension, docs/occi.md): a cold migration to it uploads the VM's disk there; without it (OCCI 1.2 has "
        "no image import) the partner is placed onto but nothing moves to it")
    image_download: bool = Field(
        default=False, description="the partner is a metavmm that hands out saved disks (OCCI's compute `save`, then "
        "the os_tpl download extension, docs/occi.md): a cold migration away from it saves the VM's disk there and "
        "downloads it; without it (OCCI 1.2 has no disk download) nothing moves away from the partner")
    _priced_by_file: bool = PrivateAttr(default=False)  # set by FederationConfig: `prices` names this provider

    def price_api_location(self) -> str | None:
        """The price API to read on a sync (relative: under the endpoint), or None."""
        if self.price_api == "off" or (self.price_api == "auto" and self._priced_by_file):
            return None
        return "api/v1/federation/prices" if self.price_api == "auto" else self.price_api

    @model_validator(mode="after")
    def _auth_complete(self) -> OcciProvider:
        if self.auth in ("token", "basic", "oidc") and self.credentials is None:
            raise ValueError(f"auth {self.auth} needs credentials (env: VAR or file: PATH)")
        if (self.auth == "oidc") != (self.oidc is not None):
            raise ValueError("auth oidc needs oidc (issuer, client_id), and oidc needs auth oidc")
        if self.auth == "basic" and not self.user:
            raise ValueError("auth basic needs user")
        if self.auth == "x509" and not self.client_cert:
            raise ValueError("auth x509 needs client_cert")
        if self.credentials is not None and self.credentials.profile:
            raise ValueError("OCCI credentials are env: or file: references, not profiles")
        return self


class SimProvider(_ProviderBase):
    """A simulated provider for demos, benchmarks and tests of other components: no real VMs."""

    kind: Literal["sim"]
    site_count: int = Field(default=1, ge=1, le=10_000)
    hosts_per_site: int = Field(default=4, ge=0, le=100_000)
    seed: int = 0
    gpu_models: list[str] = Field(default_factory=list)
    price_per_vcpu_hour: Decimal = Decimal("0.02")
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    create_delay_s: float = Field(default=0, ge=0, le=3600, description="each create waits this long first")
    live_migrate_mib_s: float = Field(default=0, ge=0, le=1e6, description="a live migration moves the VM's "
                                      "memory at this rate, reporting its progress; 0: at once")
    load_trace: dict[str, list[tuple[float, float]]] = Field(
        default_factory=dict, description="host name -> [cpu %, memory %] samples: the i-th host_load call "
        "reports sample i (the last one repeats); hosts not named report their vCPU and memory allocation")


ProviderConfig = Annotated[
    LibvirtProvider | OpenStackProvider | VmwareProvider | AwsProvider | GcpProvider | AzureProvider
    | SimProvider | OcciProvider,
    Field(discriminator="kind"),
]


class PriceItem(_Strict):
    """One on-prem price. A flavor the catalog may not know can state its shape here (``vcpus``,
    ``ram_gib``, ``gpu: H100:1``, ``arch``) so it is comparable with the public clouds; component
    prices (``unit: vcpu-hour``, ``gib-hour``, ``gpu-hour``) name a family in ``flavor``."""

    flavor: str = Field(min_length=1)
    amount: Decimal = Field(ge=0)
    unit: PriceUnit = PriceUnit.HOUR
    os: str = "linux"
    vcpus: int | None = Field(default=None, ge=1, le=100_000)
    ram_gib: Decimal | None = Field(default=None, gt=0, le=1_000_000)
    gpu: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*(:[1-9][0-9]{0,3})?$",
                            description="GPU model and count, e.g. H100:8 (count 1 when omitted)")
    arch: str | None = Field(default=None, pattern=r"^[a-z0-9_]+$")

    @model_validator(mode="after")
    def _shape(self) -> PriceItem:
        if (self.vcpus is None) != (self.ram_gib is None):
            raise ValueError("give both vcpus and ram_gib for a shape, or neither")
        if self.vcpus is not None and self.unit != PriceUnit.HOUR:
            raise ValueError(f"a shape is priced per instance-hour (unit: hour), not per {self.unit}")
        if self.unit == PriceUnit.GPU_HOUR and not self.gpu:
            raise ValueError("a gpu-hour price needs the GPU model (gpu: H100)")
        if self.gpu and self.vcpus is None and self.unit != PriceUnit.GPU_HOUR:
            raise ValueError("a GPU belongs to a shape: give vcpus and ram_gib too")
        return self

    def gpu_model_count(self) -> tuple[str | None, int]:
        if not self.gpu:
            return None, 0
        model, _, count = self.gpu.partition(":")
        return model, int(count or 1)


class PriceTable(_Strict):
    """An on-prem price table: facts the centre states itself, with currency, source and date."""

    provider: str
    region: str
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    effective_date: date
    source: str
    items: list[PriceItem] = Field(min_length=1)

    @field_validator("currency")
    @classmethod
    def _iso(cls, value: str) -> str:
        return normalise_currency(value)


class CurrencyConfig(_Strict):
    """A dated exchange-rate table: ``rates[X]`` is what one unit of X costs in ``base``.

    Prices are converted with these rates only (never fetched), so a comparison is reproducible
    and says which rates it used. ``stale_after_days`` flags prices (and this table) older than that.
    """

    base: str = Field(pattern=r"^[A-Z]{3}$")
    date: date
    source: str
    rates: dict[str, Decimal] = Field(default_factory=dict)
    stale_after_days: int = Field(default=180, ge=1)

    @field_validator("base")
    @classmethod
    def _iso_base(cls, value: str) -> str:
        return normalise_currency(value)

    @field_validator("rates")
    @classmethod
    def _iso_rates(cls, value: dict[str, Decimal]) -> dict[str, Decimal]:
        out = {}
        for code, rate in value.items():
            if not rate.is_finite() or rate <= 0:
                raise ValueError(f"rate of {code} must be a positive number, got {rate}")
            out[normalise_currency(code)] = rate
        return out


class PriceFile(_Strict):
    """A file of on-prem price tables for ``metavmm prices import onprem FILE``."""

    prices: list[PriceTable] = Field(min_length=1)


class RebalancePolicy(_Strict):
    """Move VMs off hosts that run hot, live where possible, after each inventory sync (see
    docs/rebalance.md). A host turns hot when its CPU or memory reaches a ``*_high_pct`` and stays hot
    until both are under their ``*_low_pct`` (the hysteresis band); a move goes only to a host below
    both low marks, so no VM is sent back and forth across one threshold."""

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    sites: list[str] = Field(min_length=1, description="the pool: site names (or regions) whose hosts share "
                             "the policy; moves stay inside it")
    enabled: bool = True
    cpu_high_pct: float = Field(default=85.0, gt=0, le=100)
    cpu_low_pct: float = Field(default=70.0, ge=0, le=100)
    mem_high_pct: float = Field(default=90.0, gt=0, le=100)
    mem_low_pct: float = Field(default=80.0, ge=0, le=100)
    cooldown_s: float = Field(default=300.0, ge=0, description="after an automatic move from or to a host, no "
                              "other from it (and no move of that VM) for this long")
    max_in_flight: int = Field(default=2, ge=1, le=100, description="automatic moves running at once")
    allow_cold: bool = Field(default=False, description="stop and move a VM that cannot move live")

    @model_validator(mode="after")
    def _bands(self) -> RebalancePolicy:
        if self.cpu_low_pct > self.cpu_high_pct or self.mem_low_pct > self.mem_high_pct:
            raise ValueError("a *_low_pct must not exceed its *_high_pct")
        return self


class BurstPolicy(_Strict):
    """When on-prem work overflows to public providers, and when it comes back (see docs/scheduler.md)."""

    name: str
    when_utilisation_above: float = Field(default=0.85, gt=0, le=1)
    when_wait_longer_than_s: int | None = Field(default=None, ge=0)
    allowed_providers: list[str] = Field(min_length=1)
    monthly_budget: Decimal | None = Field(default=None, ge=0, description="per project and month")
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    residency: list[str] = Field(default_factory=list, description="allowed ISO countries; empty: any")
    return_when_utilisation_below: float | None = Field(
        default=None, gt=0, le=1, description="bring burst work home below this on-prem utilisation; "
        "default: 0.1 under when_utilisation_above")
    return_min_remaining_s: int = Field(default=3600, ge=0,
                                        description="only bring back work with at least this much left to run")

    @model_validator(mode="after")
    def _return_below_threshold(self) -> BurstPolicy:
        if self.return_when_utilisation_below is not None \
                and self.return_when_utilisation_below > self.when_utilisation_above:
            raise ValueError("return_when_utilisation_below must not exceed when_utilisation_above")
        return self

    @property
    def return_below(self) -> float:
        if self.return_when_utilisation_below is not None:
            return self.return_when_utilisation_below
        return max(self.when_utilisation_above - 0.1, 0.0)


class SchedulerSettings(_Strict):
    """The scheduler's tunables. Transfer numbers are used where the catalog has no measured link data."""

    cpu_allocation_ratio: float = Field(default=1.0, gt=0, le=32, description="vCPUs per physical core")
    ram_allocation_ratio: float = Field(default=1.0, gt=0, le=4)
    expected_hours: float = Field(default=24.0, gt=0, description="duration priced when a request gives none")
    transfer_mib_per_s: float = Field(default=100.0, gt=0, description="between two sites of one provider")
    wan_mib_per_s: float = Field(default=25.0, gt=0, description="between sites of different providers")
    transfer_latency_s: float = Field(default=0.05, ge=0)
    egress_price_per_gib: Decimal = Field(default=Decimal("0.09"), ge=0,
                                          description="leaving a public cloud, in the federation currency")
    on_prem_egress_price_per_gib: Decimal = Field(default=Decimal("0"), ge=0)
    weight_price: float = Field(default=1.0, ge=0, description="multiplier of the normalised price cost")
    weight_movement: float = Field(default=0.3, ge=0, description="multiplier of conversion + transfer time")
    weight_balance: float = Field(default=0.1, ge=0, description="multiplier of the spread/pack cost")
    strategy: Literal["spread", "pack"] = "pack"
    public_hypervisors: dict[str, str] = Field(
        default_factory=lambda: {"aws": "kvm", "gcp": "kvm", "azure": "hyperv", "sim": "kvm", "occi": "kvm"},
        description="hypervisor family guests run on at each public provider kind (they expose no hosts)")
    unplaced_penalty: Decimal = Field(default=Decimal("1000000"), gt=0,
                                      description="batch placement: cost of leaving one workload unplaced")


class FederationInfo(_Strict):
    name: str = "metavmm"
    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    sync_interval_s: int = Field(default=300, ge=0, description="0 disables periodic inventory sync")
    builtin_images: bool = Field(
        default=False, description="publish the built-in image metavmm/tiny (a 1 MiB disk the broker builds, "
        "which prints a line on its serial console and halts) after the first inventory, with a replica at "
        "every libvirt site on this machine: an os_tpl that exists with no download")
    default_image: str | None = Field(
        default=None, min_length=1, max_length=300, pattern=r"^[A-Za-z0-9][A-Za-z0-9._ +/-]*$",
        description="the image (publisher/name, name or id) of an OCCI compute that names no os_tpl "
        "(GFD.224 allows a server default), e.g. metavmm/tiny")
    read_cache_s: float = Field(
        default=2.0, ge=0, le=60, description="how long an OCCI entity's rendering (or its 404) is reused; any "
        "catalog write through this broker ends it at once, one by another process (the CLI, procrastinate "
        "workers) within this bound; 0 reads the catalog on every GET")
    public_url: str | None = Field(
        default=None, max_length=400, description="the broker's address as browsers reach it behind a reverse "
        "proxy, e.g. https://cloud.example.org: the dashboard's OIDC redirect_uri is built from it (never from "
        "the Host header the broker sees), and an https one makes the dashboard's cookies Secure though the "
        "proxy talks plain HTTP to the broker")

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        """An origin (scheme, host, optional port), kept without a trailing slash so paths join onto it. No
        path: the dashboard's links and cookies are absolute (``/ui/...``), so the proxy must serve the broker
        at the root of this address, and a prefix here would only make a redirect_uri nothing answers."""
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an absolute http:// or https:// URL, not {value[:80]!r}")
        if parts.username or parts.password or parts.path.strip("/") or "?" in value or "#" in value:
            raise ValueError("must be scheme, host and port only (no user, path, query or fragment): the proxy "
                             "serves the broker at the root of this address")
        try:
            parts.port  # noqa: B018  (a bad port raises here)
        except ValueError:
            raise ValueError(f"has an invalid port: {value[:80]!r}") from None
        return value.rstrip("/")


class OidcConfig(_Strict):
    """An OpenID Connect issuer whose bearer tokens (JWTs) the broker accepts."""

    issuer: str = Field(description="the exact `iss` claim, e.g. https://login.example.org/realms/hpc")
    audience: str = Field(description="the `aud` the tokens must carry (the broker's client id)")
    jwks_uri: str | None = Field(default=None, description="where the signing keys are; default: discovery")
    algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"], min_length=1)
    user_claim: str = Field(default="sub", description="claim that identifies the user (matched to oidc_subject)")
    name_claim: str = Field(default="preferred_username", description="claim used as the user name on first login")
    project_claim: str | None = Field(default=None, description="claim naming the project, when the header is absent")
    create_users: bool = Field(default=True, description="create a user (without memberships) on first login")
    jwks_cache_s: int = Field(default=300, ge=0)
    leeway_s: int = Field(default=30, ge=0, le=600)
    client_id: str | None = Field(default=None, description="the dashboard's client id at the issuer (its "
                                  "login, authorization code with PKCE); default: audience")
    client_secret: str | None = Field(default=None, description="for a confidential client; a public one "
                                      "relies on PKCE alone")
    authorization_endpoint: str | None = Field(default=None, description="default: discovery")
    token_endpoint: str | None = Field(default=None, description="default: discovery")
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile"], min_length=1)


class TlsConfig(_Strict):
    """The broker serves HTTPS with this certificate (``metavmm serve``)."""

    cert_file: str
    key_file: str


class ClientCertConfig(_Strict):
    """X.509 client certificates, verified against ``ca_file``; needs ``tls`` (the broker terminates TLS)."""

    enabled: bool = False
    ca_file: str | None = None

    @model_validator(mode="after")
    def _needs_ca(self) -> ClientCertConfig:
        if self.enabled and not self.ca_file:
            raise ValueError("client certificates need ca_file, the CA that signs them")
        return self


class AuthConfig(_Strict):
    oidc: OidcConfig | None = None
    api_tokens: bool = Field(default=True, description="accept API tokens (Bearer, or the HTTP Basic password)")
    tls: TlsConfig | None = None
    client_certs: ClientCertConfig = Field(default_factory=ClientCertConfig)
    token_max_days: int = Field(default=365, ge=1, description="longest lifetime a minted token may have")
    identity_cache_s: float = Field(
        default=5.0, ge=0, le=300, description="how long an API token's identity is reused without reading the "
        "catalog; a revocation or membership change through this broker ends it at once, one made by another "
        "process (the CLI, a second broker) within this bound; 0 reads the catalog on every request")


class LimitsConfig(_Strict):
    """What the broker accepts from callers and fetches for them (docs/security.md explains each)."""

    json_max_bytes: int = Field(default=1 << 20, ge=1024, description="largest JSON request body (413 above)")
    json_max_depth: int = Field(default=64, ge=2, le=1000, description="deepest JSON nesting of a body (400)")
    json_max_number_digits: int = Field(default=100, ge=16, le=4300,
                                        description="longest JSON number literal in a body, in characters (400)")
    outbound_allowed_networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = Field(
        default_factory=list, description="private, loopback or link-local networks the broker may still fetch "
        "image and list URLs from (e.g. a site mirror at 10.1.0.0/16); everything non-global is refused otherwise")
    outbound_max_redirects: int = Field(default=5, ge=0, le=20, description="redirect hops a fetch follows")
    image_max_file_bytes: int = Field(default=256 << 30, ge=1 << 20,
                                      description="largest untrusted image file the broker accepts (422 above)")
    image_max_virtual_bytes: int = Field(default=4 << 40, ge=1 << 20,
                                         description="largest virtual disk size an untrusted image may declare (422)")
    ova_max_members: int = Field(default=64, ge=2, le=100_000, description="files in one OVA package (422 above)")
    ova_max_member_bytes: int = Field(default=256 << 30, ge=1 << 20, description="largest file in an OVA (422)")
    ova_max_total_bytes: int = Field(default=512 << 30, ge=1 << 20,
                                     description="all files of an OVA together, expanded (422 above)")
    ova_max_gzip_ratio: int = Field(default=200, ge=2, le=100_000, description="how many times its compressed "
                                    "size a gzip-compressed OVA or OVF file may expand to (a decompression bomb, 422)")


class OperationsConfig(_Strict):
    """How the operations engine runs steps (see docs/operations.md)."""

    executor: Literal["inprocess", "procrastinate"] = Field(
        default="inprocess", description="inprocess: the broker runs steps itself (single node, SQLite or "
        "PostgreSQL); procrastinate: `metavmm operations worker` processes run them (PostgreSQL only)")
    concurrency: int = Field(default=4, ge=1, le=256, description="operations one executor runs at once")
    lease_s: float = Field(default=30, gt=0, description="an executor's claim on an operation; renewed while alive")
    max_attempts: int = Field(default=3, ge=1, le=20, description="tries per step on transient errors")
    retry_base_s: float = Field(default=1.0, ge=0, description="first backoff; doubles per attempt, jittered")
    step_timeout_s: float = Field(default=1800, gt=0)
    stop_grace_s: float = Field(default=5, ge=0, le=3600, description="on shutdown (SIGTERM, Ctrl-C, engine "
                                "stop) the time steps already running get to finish; then they are cancelled and "
                                "left for the next executor to resume, as after a crash")
    reconcile_interval_s: int = Field(default=300, ge=0, description="0 disables the reconciliation loop")
    work_dir: str | None = Field(default=None, description="scratch space for exported and converted disks")
    boot_marker: str | None = Field(default=None, max_length=200, description="regex the serial console of a "
                                    "cold migration's clone must show before the boot check passes (e.g. "
                                    "'login:'), where the target has a console; a request or the workload's spec "
                                    "may give its own")

    @field_validator("boot_marker")
    @classmethod
    def _marker_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            import re
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"boot_marker is not a valid regex: {exc}") from None
        return value


class HaConfig(_Strict):
    """HA restart (docs/protection.md): when a protected workload's host counts as lost, and which providers
    see the same disks (a restart from the surviving disk goes only to one of those)."""

    lost_after_syncs: int = Field(default=3, ge=1, le=1000, description="consecutive failed inventory syncs "
                                  "after which a provider's hosts count as lost")
    shared_storage: list[list[str]] = Field(default_factory=list, description="groups of provider names whose "
                                            "disks are on storage they all reach; libvirt providers with the "
                                            "same storage_dir share it without being listed")
    restart_timeout_s: float = Field(default=300, gt=0, description="how long a restarted copy has to run")


class MetricsConfig(_Strict):
    """Where Prometheus reads ``/metrics``: on the API port with an admin token (always), and, with
    ``listen``, also without a token on a separate address meant for a private network only."""

    enabled: bool = True
    listen: str | None = Field(default=None, pattern=r"^[^:\s]*:[0-9]{1,5}$",
                               description="host:port of a token-less metrics listener, e.g. 127.0.0.1:9464")
    events_poll_s: float = Field(default=0.5, gt=0, le=30,
                                 description="how often an open /api/v1/events stream looks for new rows")
    events_recheck_s: float = Field(default=5.0, gt=0, le=300,
                                    description="how often an open event stream checks that its token or dashboard "
                                                "session still holds; one gone (logout, expiry, revocation) ends it")


class MarketplaceConfig(_Strict):
    subscription_sync_s: int = Field(
        default=3600, ge=0, description="how often the broker fetches, verifies and imports every enabled image "
        "list subscription (the first round at start); 0 leaves it to `metavmm marketplace sync` or REST")
    blob_sweep_s: int = Field(
        default=3600, ge=0, description="how often the broker removes blobs no image references (left by a "
        "publish killed before its commit) and scratch files of cut uploads; the first round at start, 0: "
        "only then")
    blob_sweep_grace_s: int = Field(
        default=3600, ge=60, description="a blob or scratch file younger than this is never swept: a publish "
        "in flight stores its blob before its row commits")


class Discount(_Strict):
    """A committed-use or reserved discount: ``provider``'s compute prices times ``factor`` (0.63: 37 %
    off) from ``valid_from`` until ``valid_until`` (exclusive; open without it). Disks and egress keep
    their list prices."""

    provider: str
    factor: Decimal = Field(gt=0, le=1)
    valid_from: date
    valid_until: date | None = None
    source: str = Field(default="", description="the commitment, e.g. '1-year CUD, order 1234'")

    @model_validator(mode="after")
    def _dates(self) -> Discount:
        if self.valid_until is not None and self.valid_until <= self.valid_from:
            raise ValueError("valid_until must be after valid_from")
        return self


class FederationConfig(_Strict):
    federation: FederationInfo = Field(default_factory=FederationInfo)
    operations: OperationsConfig = Field(default_factory=OperationsConfig)
    database: str | None = None
    auth: AuthConfig = Field(default_factory=AuthConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    providers: list[ProviderConfig] = Field(default_factory=list)
    prices: list[PriceTable] = Field(default_factory=list)
    currency: CurrencyConfig | None = None
    policies: list[BurstPolicy] = Field(default_factory=list)
    discounts: list[Discount] = Field(default_factory=list)
    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    ha: HaConfig = Field(default_factory=HaConfig)
    rebalance: list[RebalancePolicy] = Field(default_factory=list, description="automatic live migration")
    marketplace: MarketplaceConfig = Field(default_factory=MarketplaceConfig)

    @model_validator(mode="after")
    def _references(self) -> FederationConfig:
        names = [p.name for p in self.providers]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"provider names must be unique; repeated: {', '.join(dupes)}")
        for i, table in enumerate(self.prices):
            if table.provider not in names:
                raise ValueError(f"prices[{i}].provider {table.provider!r} is not a configured provider")
        for p in self.providers:
            if isinstance(p, OcciProvider):  # the file's agreement prices the partner, not its price API
                p._priced_by_file = any(t.provider == p.name for t in self.prices)
        for i, group in enumerate(self.ha.shared_storage):
            unknown = [p for p in group if p not in names]
            if unknown:
                raise ValueError(f"ha.shared_storage[{i}] names unknown providers: {unknown}")
        for i, pol in enumerate(self.policies):
            unknown = [p for p in pol.allowed_providers if p not in names]
            if unknown:
                raise ValueError(f"policies[{i}].allowed_providers names unknown providers: {unknown}")
        rebalance = [r.name for r in self.rebalance]
        if len(set(rebalance)) != len(rebalance):
            raise ValueError("rebalance policy names must be unique")
        for i, disc in enumerate(self.discounts):
            if disc.provider not in names:
                raise ValueError(f"discounts[{i}].provider {disc.provider!r} is not a configured provider")
            for j, other in enumerate(self.discounts[:i]):
                if other.provider == disc.provider and disc.valid_from < (other.valid_until or date.max) \
                        and other.valid_from < (disc.valid_until or date.max):
                    raise ValueError(f"discounts[{i}] overlaps discounts[{j}] for {disc.provider}: one factor a day")
        return self

    def provider(self, name: str) -> Any:
        for p in self.providers:
            if p.name == name:
                return p
        raise KeyError(name)


# --- loading with located errors -----------------------------------------------------------------


def _node_at(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """Follow a pydantic error location through the YAML node tree; the deepest node reached."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next((v for k, v in node.value if getattr(k, "value", None) == part), None)
            if match is None:
                continue  # a union tag such as 'libvirt', or a key that is missing
            node = match
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
    return node


def _key_node(root: yaml.Node | None, loc: tuple[Any, ...]) -> yaml.Node | None:
    """The node of the offending key itself (for 'unknown key' errors)."""
    parent = _node_at(root, loc[:-1])
    if isinstance(parent, yaml.MappingNode):
        for k, _ in parent.value:
            if getattr(k, "value", None) == loc[-1]:
                return k
    return parent


def _path(loc: tuple[Any, ...], model_tags: set[str]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in model_tags:
            continue
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"




def _allowed_keys(loc: tuple[Any, ...], kind_models: dict[str, type[BaseModel]],
                  root: type[BaseModel] | None = None) -> list[str]:
    """Field names valid where an unknown key was found, for the 'did you mean' hint."""
    model: Any = root or FederationConfig
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        if part in kind_models:
            model = kind_models[part]
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        for cand in (ann, *getattr(ann, "__args__", ())):
            for inner in (cand, *getattr(cand, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    model = inner
                    break
    return list(getattr(model, "model_fields", {}))


def _describe(err: dict[str, Any], kind_models: dict[str, type[BaseModel]],
              root: type[BaseModel] | None = None) -> str:
    etype = err["type"]
    if etype == "extra_forbidden":
        key = str(err["loc"][-1])
        hint = difflib.get_close_matches(key, _allowed_keys(err["loc"], kind_models, root), n=1)
        return "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else "")
    if etype == "missing":
        return "required key is missing"
    if etype == "union_tag_invalid":
        return f"unknown provider kind; expected one of {', '.join(sorted(KINDS))}"
    if etype == "union_tag_not_found":
        return "provider needs a 'kind' (one of " + ", ".join(sorted(KINDS)) + ")"
    msg = err["msg"]
    if "input" in err and not isinstance(err["input"], dict | list):
        msg += f" (got {err['input']!r})"
    return msg


def parse_config(text: str, source: str = "<config>") -> FederationConfig:
    """Parse and validate a federation file's text; raise ConfigError with located messages."""
    cfg = parse_yaml_model(text, source, FederationConfig)
    if cfg.prices:
        check_tables(cfg.prices, text, source, {p.name for p in cfg.providers if not KINDS[p.kind].lists_flavors})
    return cfg


def parse_yaml_model(text: str, source: str, model: type[M]) -> M:
    """Parse YAML and validate it as ``model``; every error names the file, line and key path."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}:1: expected a mapping at the top level, got {type(data).__name__}")
    kind_models = {
        m.model_fields["kind"].annotation.__args__[0]: m  # type: ignore[union-attr]
        for m in (LibvirtProvider, OpenStackProvider, VmwareProvider, AwsProvider, GcpProvider,
                  AzureProvider, SimProvider, OcciProvider)
    }
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            if err["type"] == "extra_forbidden":
                node = _key_node(root, loc)
            elif err["type"].startswith("union_tag"):
                node = _node_at(root, (*loc, "kind"))  # point at the kind itself
            else:
                node = _node_at(root, loc)
            line = f":{node.start_mark.line + 1}" if node is not None else ""
            lines.append(f"{source}{line}: {_path(loc, set(kind_models))}: {_describe(err, kind_models, model)}")
        raise ConfigError("\n".join(lines)) from None


def load_config(path: str | Path | None = None) -> FederationConfig:
    """Load the federation file at ``path`` (default: $METAVMM_CONFIG or config/default.yaml)."""
    path = Path(path or os.environ.get("METAVMM_CONFIG") or DEFAULT_CONFIG)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the federation file: {exc.strerror}") from None
    return parse_config(text, str(path))
