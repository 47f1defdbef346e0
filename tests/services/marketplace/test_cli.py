"""`metavmm marketplace` end to end: two sites' catalogs, a signed list between them, real libvirt replication."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

from click.testing import CliRunner

from metavmm.cli.main import main
from tests.cli.broker import run_to_end
from tests.services.marketplace.conftest import Disks, two_schools


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_publish_list_sign_subscribe_and_replicate(tmp_path: Path, storage_root: Path, disks: Disks) -> None:
    fed = tmp_path / "fed.yaml"
    fed.write_text(two_schools(storage_root).model_dump_json())  # JSON is YAML
    site_a = ["--config", str(fed), "--database", f"sqlite:///{tmp_path / 'a.db'}"]
    site_b = ["--config", str(fed), "--database", f"sqlite:///{tmp_path / 'b.db'}"]

    code, out, err = run(*site_a, "marketplace", "publish", str(disks.vmdk), "--name", "intro-linux",
                         "--publisher", "school-a", "--format", "vmdk", "--visibility", "public", "--os", "Debian",
                         "--os-version", "12", "--tag", "course", "--port", "22/tcp")
    assert code == 0, err
    assert "published school-a/intro-linux v1" in out
    code, _, err = run(*site_a, "marketplace", "publish", str(disks.vdi), "--name", "x", "--publisher", "school-a",
                       "--format", "vdi", "--sha256", "0" * 64)
    assert code == 1 and "SHA256 mismatch" in err and "Traceback" not in err

    code, out, _ = run(*site_a, "marketplace", "list", "--tag", "course")
    assert code == 0 and "intro-linux v1" in out and "school-a" in out and "Debian 12" in out and "vmdk" in out
    code, out, _ = run(*site_a, "marketplace", "list", "--os", "Windows")
    assert code == 0 and "(0 of 0)" in out

    key = tmp_path / "keys" / "school-a.pem"
    assert run("marketplace", "keygen", str(key))[0] == 0
    signed = tmp_path / "school-a.list"
    code, _, err = run(*site_a, "marketplace", "sign-list", "--publisher", "school-a", "--key", str(key),
                       "--version", "1", "--out", str(signed))
    assert code == 0, err

    tampered = tmp_path / "tampered.list"
    envelope = json.loads(signed.read_bytes())
    payload = base64.b64decode(envelope["payload"]).replace(b"intro-linux", b"intro-linuz")
    envelope["payload"] = base64.b64encode(payload).decode()
    tampered.write_text(json.dumps(envelope))
    pub = str(key) + ".pub"
    assert run(*site_b, "marketplace", "subscribe", "evil", "--url", str(tampered), "--key", pub)[0] == 0
    code, _, err = run(*site_b, "marketplace", "sync-list", "evil")
    assert code == 1 and "tampered" in err
    assert run(*site_b, "marketplace", "subscribe", "school-a", "--url", str(signed), "--key", pub,
               "--endorser", "school-a")[0] == 0
    code, out, err = run(*site_b, "marketplace", "sync-list", "school-a")
    assert code == 0 and "1 added" in out, err
    code, out, _ = run(*site_b, "marketplace", "sync-list", "--all")  # cron: one refusal does not stop the rest
    assert code == 1 and "evil: refused" in out and "school-a v1: 0 added, 1 updated" in out
    code, out, _ = run(*site_b, "marketplace", "subscriptions")
    rows = {line.split()[1]: line for line in out.splitlines() if line.split()[1:2] in (["evil"], ["school-a"])}
    assert code == 0 and "failing" in rows["evil"] and "tampered" in rows["evil"] and " ok " in rows["school-a"], out

    assert run(*site_b, "catalog", "sync")[0] == 0
    # the command submits; the broker (here an engine started for it) copies
    code, out, err = run(*site_b, "marketplace", "replicate", "school-a/intro-linux", "--site", "school-b")
    assert code == 0 and "(replicate of " in out and ": pending" in out, err
    done = run_to_end(site_b[3], fed.read_text(), out.split("operation ", 1)[1].split()[0])
    assert done.state == "succeeded" and not done.outputs["replica_reused"], done
    replica = next((storage_root / "b" / "images").glob("*.qcow2"))
    compare = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(disks.raw), str(replica)],
                             capture_output=True)
    assert compare.returncode == 0
    code, out, _ = run(*site_b, "marketplace", "replicate", "school-a/intro-linux", "--site", "school-b")
    again = run_to_end(site_b[3], fed.read_text(), out.split("operation ", 1)[1].split()[0])
    assert code == 0 and again.state == "succeeded" and again.outputs["replica_reused"], again
    code, out, _ = run(*site_b, "marketplace", "prune")
    assert code == 0 and "0 removed, 0 kept" in out  # nothing expired yet
    code, out, _ = run(*site_b, "marketplace", "show", "intro-linux")
    shown = json.loads(out)
    assert shown["image_list"] == "school-a-images" and [r["site"] for r in shown["replicas"]] == ["school-b"]
