"""deploy/sipshadow.service: the keys a node's unit must have, and systemd's own verdict on it."""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parents[2] / "deploy" / "sipshadow.service"
INSTALLED = "/usr/local/bin/sipshadow"


def service() -> configparser.SectionProxy:
    """The [Service] section (strict=False: systemd allows a key more than once)."""
    parser = configparser.ConfigParser(strict=False, interpolation=None, comment_prefixes=("#", ";"))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are case-sensitive
    parser.read_string(UNIT.read_text())
    assert parser.sections() == ["Unit", "Service", "Install"]
    return parser["Service"]


def test_the_unit_is_a_notify_service_with_a_watchdog_and_a_handover_timeout() -> None:
    unit = service()
    expected = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "2s", "Restart": "on-failure",
        "RuntimeDirectory": "sipshadow%i", "TimeoutStopSec": "10s", "KillMode": "mixed", "LimitNOFILE": "65536",
        "User": "sipshadow", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "ReadWritePaths": "/var/lib/sipshadow%i", "ProtectKernelModules": "yes",
        "ProtectControlGroups": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes",
        "SystemCallArchitectures": "native", "MemoryDenyWriteExecute": "yes",
    }  # fmt: skip
    assert {key: unit.get(key) for key in expected} == expected
    # %i: empty for the plain unit, K for instance sipshadow@K (one node per core)
    assert unit["ExecStart"] == f"{INSTALLED} serve --config /etc/sipshadow/sipshadow%i.toml"
    assert unit["ExecReload"] == f"{INSTALLED} ctl --socket /run/sipshadow%i/control.sock reload"


def test_takeover_keeps_its_capabilities_address_families_and_proc_sys() -> None:
    unit = service()
    bounding = set(unit["CapabilityBoundingSet"].split())
    assert {"CAP_NET_ADMIN", "CAP_NET_RAW"} <= bounding
    assert bounding == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"}
    assert set(unit["AmbientCapabilities"].split()) == bounding
    families = set(unit["RestrictAddressFamilies"].split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}
    # tap mode writes /proc/sys/net/ipv4/conf/*/arp_ignore (runtime.identity): it must stay writable
    assert "ProtectKernelTunables" not in unit


@pytest.mark.parametrize("name", ["sipshadow.service", "sipshadow@2.service"])
def test_systemd_analyze_verify_accepts_the_unit_and_an_instance_of_it(tmp_path: Path, name: str) -> None:
    """On a copy run from this venv's console script (verify checks the executables exist). The
    exit code alone is not enough: unknown keys and bad values are only warnings on stderr."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing: install the Debian package systemd (make setup)"
    script = Path(sys.executable).with_name("sipshadow")
    assert script.is_file(), script
    copy = tmp_path / name
    copy.write_text(UNIT.read_text().replace(INSTALLED, str(script)))
    verdict = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    about_ours = [line for line in (verdict.stdout + verdict.stderr).splitlines() if "sipshadow" in line]
    assert verdict.returncode == 0 and about_ours == [], verdict.stdout + verdict.stderr


def test_systemd_analyze_verify_does_find_fault(tmp_path: Path) -> None:
    """The check above can fail: a misspelt key and a missing executable are reported."""
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None
    copy = tmp_path / "sipshadow.service"
    broken = UNIT.read_text().replace("WatchdogSec=2s", "WatchdogSecs=2s")
    copy.write_text(broken.replace(INSTALLED, str(tmp_path / "no-such-sipshadow")))
    verdict = subprocess.run([analyze, "verify", "--man=no", str(copy)], capture_output=True, text=True, timeout=60)
    assert verdict.returncode != 0
    assert "WatchdogSecs" in verdict.stderr and "no-such-sipshadow" in verdict.stderr
