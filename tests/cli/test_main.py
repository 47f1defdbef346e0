"""The metavmm command line, against real SQLite, PostgreSQL and the local libvirt daemon."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from metavmm.cli.main import main

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_config_check_reports_typo_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "fed.yaml"
    bad.write_text((REPO / "config" / "default.yaml").read_text().replace("domain_type:", "domain_typ:"))
    code, out, err = run("config", "check", str(bad))
    assert code == 1
    assert f"{bad}:" in err and "providers[0].domain_typ: unknown key (did you mean 'domain_type'?)" in err
    assert "Traceback" not in out + err


def test_config_check_refuses_a_price_the_scheduler_cannot_use(tmp_path: Path) -> None:
    default = (REPO / "config" / "default.yaml").read_text()
    half = "\n".join(line for line in default.splitlines() if "unit: gib-hour" not in line)  # vcpu-hour alone
    bad = tmp_path / "fed.yaml"
    bad.write_text(half)
    line = next(i for i, text in enumerate(half.splitlines(), 1) if "unit: vcpu-hour" in text)
    code, out, err = run("config", "check", str(bad))
    assert code == 1 and "Traceback" not in out + err
    assert f"{bad}:{line}: family 'custom' has a vcpu-hour price but no gib-hour price at local-libvirt/local" in err


def test_config_check_summarises_default() -> None:
    code, out, _ = run("config", "check")
    assert code == 0 and "local-libvirt" in out and "demo-sim" in out


def test_db_upgrade_on_both_databases(db_url: str) -> None:
    code, out, _ = run("--database", db_url, "db", "upgrade")
    assert code == 0 and "at revision" in out
    code, out, _ = run("--database", db_url, "db", "current")
    assert code == 0 and out.strip() != "(empty database)"


def test_bad_database_url_is_a_clear_error() -> None:
    code, _, err = run("--database", "mysql://x/y", "db", "upgrade")
    assert code == 1 and "expected sqlite:// or postgresql://" in err


def _virsh_host_cpu() -> dict[str, str]:
    xml = subprocess.run(["virsh", "-c", "qemu:///system", "capabilities"], check=True, capture_output=True,
                         text=True).stdout
    cpu = ET.fromstring(xml).find("host/cpu")
    assert cpu is not None
    return {"arch": cpu.findtext("arch", ""), "vendor": cpu.findtext("vendor", ""),
            "model": cpu.findtext("model", ""), "features": {f.get("name") for f in cpu.findall("feature")}}


def test_sync_and_show_lists_the_local_libvirt_host(tmp_path: Path) -> None:
    """The default federation's libvirt provider reports the real host CPU, as libvirt itself does."""
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    code, out, _ = run("--database", db_url, "catalog", "sync", "--provider", "local-libvirt")
    assert code == 0, out
    code, out, _ = run("--database", db_url, "catalog", "show", "hosts", "--provider", "local-libvirt", "--json")
    assert code == 0
    (host,) = json.loads(out)
    expected = _virsh_host_cpu()
    assert host["provider"] == "local-libvirt"
    assert (host["cpu_arch"], host["cpu_vendor"], host["cpu_model"]) == (
        expected["arch"], expected["vendor"], expected["model"])
    assert expected["features"] <= set(host["cpu_features"])  # plus the model's own features, expanded
    assert host["cpu_cores"] > 0 and host["memory_mib"] > 0
    if "avx2" in host["cpu_features"]:
        assert "HW_CPU_X86_AVX2" in host["cpu_traits"]
    code, table, _ = run("--database", db_url, "catalog", "show", "hosts")
    assert code == 0 and expected["model"] in table and "local-libvirt" in table


def test_sync_unknown_provider_is_rejected(tmp_path: Path) -> None:
    code, _, err = run("--database", f"sqlite:///{tmp_path / 'c.db'}", "catalog", "sync", "--provider", "nope")
    assert code == 2 and "not in the federation file: nope" in err


@pytest.mark.parametrize("what", ["providers", "sites", "flavors", "prices", "workloads", "operations"])
def test_show_every_view_after_sim_sync(tmp_path: Path, what: str) -> None:
    db_url = f"sqlite:///{tmp_path / 'c.db'}"
    assert run("--database", db_url, "catalog", "sync", "--provider", "demo-sim")[0] == 0
    code, out, _ = run("--database", db_url, "catalog", "show", what, "--json")
    assert code == 0
    rows = json.loads(out)
    if what in ("providers", "sites", "flavors", "prices"):
        assert rows and all(r["provider"] in ("demo-sim", "local-libvirt") for r in rows)
    else:
        assert rows == []


def test_show_on_empty_database_says_what_to_run(tmp_path: Path) -> None:
    code, _, err = run("--database", f"sqlite:///{tmp_path / 'empty.db'}", "catalog", "show", "hosts")
    assert code == 1 and "has no schema: run `metavmm db upgrade`" in err


def test_unreachable_postgres_is_a_clear_error() -> None:
    code, _, err = run("--database", "postgresql://nobody@127.0.0.1:1/none", "db", "upgrade")
    assert code == 1 and err.startswith("error: database:") and "Traceback" not in err


def test_main_help_names_every_command_with_its_own_short_help() -> None:
    """The lazy main group's table (metavmm.cli.main.COMMANDS) says what the commands themselves say."""
    import click

    from metavmm.cli.main import COMMANDS

    ctx = click.Context(main)
    for name, (_module, _attr, _extra, short) in COMMANDS.items():
        command = main.get_command(ctx, name)
        assert command is not None and command.name == name
        assert command.get_short_help_str(limit=500) == short, name
    assert "provision" in main.get_command(ctx, "operations").commands  # type: ignore[union-attr]


def test_help_loads_no_database_or_scheduler_code() -> None:
    """`metavmm --help` starts in a blink because it imports none of the command modules."""
    probe = ("import sys\nfrom metavmm.cli.main import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print(sorted(m for m in ('sqlalchemy', 'networkx', 'alembic', 'metavmm.catalog.db', "
             "'metavmm.cli.operations', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert "serve" in out and out.strip().splitlines()[-1] == "[]", out
