"""The federation file: valid examples load, and every mistake is reported with file, line and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from metavmm.foundation.config import CredentialRef, load_config, parse_config
from metavmm.foundation.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("path", sorted((REPO / "config").rglob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.providers, f"{path} declares no provider"


def test_example_covers_every_provider_kind() -> None:
    kinds = {p.kind for p in load_config(REPO / "config" / "examples" / "federation.yaml").providers}
    assert kinds == {"libvirt", "openstack", "vmware", "aws", "gcp", "azure", "sim", "occi"}


def _error(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "fed.yaml")
    return str(info.value)


def test_typo_names_line_key_and_suggestion() -> None:
    msg = _error("providers:\n  - name: lv\n    kind: libvirt\n    endpont: qemu:///system\n")
    assert msg == "fed.yaml:4: providers[0].endpont: unknown key (did you mean 'endpoint'?)"


def test_wrong_type_names_line_and_value() -> None:
    msg = _error("providers:\n  - name: s\n    kind: sim\n    hosts_per_site: many\n")
    assert msg.startswith("fed.yaml:4: providers[0].hosts_per_site: ")
    assert "'many'" in msg


def test_unknown_kind_and_missing_required_key() -> None:
    msg = _error("providers:\n  - name: x\n    kind: kvm\n")
    assert msg.startswith("fed.yaml:3: providers[0]: unknown provider kind")
    msg = _error("providers:\n  - name: os\n    kind: openstack\n")
    assert msg == "fed.yaml:2: providers[0].cloud: required key is missing"


def test_cross_references_are_checked() -> None:
    msg = _error(
        "providers:\n  - {name: a, kind: sim}\n"
        "prices:\n  - {provider: b, region: r, currency: USD, effective_date: 2026-01-01, source: s,"
        " items: [{flavor: f, amount: 1}]}\n"
    )
    assert "prices[0].provider 'b' is not a configured provider" in msg
    assert "repeated: a" in _error("providers:\n  - {name: a, kind: sim}\n  - {name: a, kind: sim}\n")


def test_invalid_yaml_and_wrong_top_level() -> None:
    assert _error("providers: [\n").startswith("fed.yaml:2: not valid YAML")
    assert _error("- just\n- a list\n") == "fed.yaml:1: expected a mapping at the top level, got list"


def test_credentials_are_references_and_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_text("s3cret\n")
    ref = CredentialRef(file=str(secret_file))
    assert ref.reference() == f"file:{secret_file}"
    assert ref.resolve() == "s3cret"
    assert "s3cret" not in repr(ref)
    monkeypatch.setenv("MV_TEST_SECRET", "from-env")
    assert CredentialRef(env="MV_TEST_SECRET").resolve() == "from-env"
    with pytest.raises(ConfigError, match="MV_TEST_MISSING is not set"):
        CredentialRef(env="MV_TEST_MISSING").resolve()
    msg = _error("providers:\n  - name: a\n    kind: aws\n    regions: [x]\n    credentials: {env: A, file: B}\n")
    assert "exactly one of env, file or profile" in msg


@pytest.mark.parametrize(("network", "message"), [
    ("{cidr: ten-slash-eight}", "fed.yaml:7: providers[0].sites[0].clone_network.cidr: Input is not a valid IPv4 "
                                "network (got 'ten-slash-eight')"),
    ("{cidr: 10.0.0.5/24}", "clone_network.cidr: Input is not a valid IPv4 network"),  # host bits set
    ("{cidr: 10.0.0.0/24, gateway: 10.0.1.1}", "fed.yaml:7: providers[0].sites[0].clone_network: Value error, "
                                               "gateway 10.0.1.1 is outside cidr 10.0.0.0/24"),
    ("{cidr: 10.0.0.0/24, gateway: 10.0.0.255}", "is the network or broadcast address of 10.0.0.0/24"),
    ("{cidr: 10.0.0.0/31}", "too small for clones"),
    ("{cidr: 10.0.0.0/24, dns: [resolver]}", "clone_network.dns[0]: Input is not a valid IPv4 address"),
    ("{cidr: 10.0.0.0/24, gatway: 10.0.0.1}", "clone_network.gatway: unknown key (did you mean 'gateway'?)"),
])
def test_clone_network_is_checked(network: str, message: str) -> None:
    text = ("providers:\n  - kind: libvirt\n    name: lv\n    sites:\n      - region: r1\n        country: TW\n"
            f"        clone_network: {network}\n")
    assert message in _error(text)


def test_clone_network_is_optional_and_parsed() -> None:
    cfg = parse_config("providers:\n  - kind: libvirt\n    name: lv\n    sites:\n"
                       "      - {region: a, clone_network: {cidr: 10.1.0.0/16, gateway: 10.1.0.1, dns: [10.1.0.53]}}\n"
                       "      - {region: b}\n")
    a, b = cfg.providers[0].sites
    assert str(a.clone_network.cidr) == "10.1.0.0/16" and str(a.clone_network.gateway) == "10.1.0.1"
    assert [str(d) for d in a.clone_network.dns] == ["10.1.0.53"] and b.clone_network is None


def test_public_url_is_an_origin() -> None:
    """``federation.public_url`` builds the OIDC redirect_uri: an origin only, kept without a trailing slash."""
    assert parse_config("federation: {public_url: 'https://cloud.example.org:8443/'}\n").federation.public_url == \
        "https://cloud.example.org:8443"
    assert parse_config("{}\n").federation.public_url is None
    for bad, words in (("cloud.example.org", "absolute http"), ("ftp://cloud.example.org", "absolute http"),
                       ("https://u:p@cloud.example.org", "no user"), ("https://cloud.example.org/metavmm", "no user"),
                       ("https://cloud.example.org/?next=x", "no user"), ("https://cloud.example.org:99999", "port")):
        msg = _error(f"federation:\n  public_url: '{bad}'\n")
        assert msg.startswith("fed.yaml:2: federation.public_url: ") and words in msg, msg
