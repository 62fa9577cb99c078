"""Config files and flags: good ones build, bad ones get one line naming the key, exit 2."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from sipshadow.cli import main
from sipshadow.runtime.config import ConfigError, ConfigFile, build, load_file

GOOD = """
[service]
listen = "127.0.0.1:5060"
[cluster]
policy = "weighted-random"
members = ["127.0.0.1:5070", { address = "127.0.0.1:5071", weight = 3 }]
[health]
probe_interval_ms = 250
[dialogs]
terminated_linger_s = 4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sipshadow.toml"
    path.write_text(text)
    return path


def test_a_good_file_builds_the_gateway_config(tmp_path: Path) -> None:
    config = build(load_file(write(tmp_path, GOOD)))
    gateway = config.gateway
    assert config.listen == ("127.0.0.1", 5060)
    assert [(m.address, m.weight) for m in gateway.members] == [(("127.0.0.1", 5070), 1), (("127.0.0.1", 5071), 3)]
    assert (gateway.policy, gateway.probe_interval_s, gateway.terminated_linger_s) == ("weighted-random", 0.25, 4)


def test_flags_override_the_file(tmp_path: Path) -> None:
    config = build(
        load_file(write(tmp_path, GOOD)), listen="127.0.0.1:6000", members=["[::1]:7000"], policy="call-id-hash"
    )
    assert config.listen == ("127.0.0.1", 6000)
    assert [m.address for m in config.gateway.members] == [("::1", 7000)]
    assert config.gateway.policy == "call-id-hash"


@pytest.mark.parametrize(
    ("text", "key", "problem"),
    [
        ('[health]\nprobe_interval_ms = "fast"', "health.probe_interval_ms", "expected `int`, got `str`"),
        ("[cluster]\nmembers = []", "cluster.members", "at least one member"),
        ('[cluster]\nmembers = ["127.0.0.1"]', "cluster.members[0]", "has no port"),
        ('[cluster]\nmembers = ["h:5060"]\npolicy = "fastest"', "cluster.policy", "unknown policy 'fastest'"),
        ('[cluster]\nmembers = ["h:5060"]\n[service]\nlisten = "h:99999"', "service.listen", "bad port"),
        ('[cluster]\nmembers = ["h:5060"]\n[dialogs]\nearly_timeout_s = -1', "dialogs.early_timeout_s", "must be > 0"),
        ('[cluster]\nmembers = ["h:1", "h:1"]', "cluster.members", "listed twice"),
        ('[servise]\nlisten = "h:1"', "servise", "unknown key"),
        ('[service]\nlissen = "h:1"', "service.lissen", "unknown key"),
        ('[cluster]\nmembers = ["h:1"]\n[service]\nlisten = "0.0.0.0:5060"', "service.advertise", "not a usable IP"),
        ('[cluster]\nmembers = ["sip:h:5060;transport=sctp"]', "cluster.members[0]", "transport must be udp or tcp"),
        ('[cluster]\nmembers = ["sip:bob@h:5060"]', "cluster.members[0]", "names a host, not a user"),
        ('[cluster]\nmembers = ["sip:h;maddr=x"]', "cluster.members[0]", "only the transport parameter"),
        ('[cluster]\nmembers = ["h:1"]\n[tcp]\nconnections_per_source = 0', "tcp.connections_per_source", "> 0"),
        ('[cluster]\nmembers = ["h:1"]\n[tcp]\nidle_timeout = 5', "tcp.idle_timeout", "unknown key"),
    ],
)
def test_a_bad_value_names_its_key(tmp_path: Path, text: str, key: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(load_file(write(tmp_path, text)))
    assert caught.value.key == key
    assert problem in str(caught.value)


def test_cli_prints_one_line_and_exits_2_on_a_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, '[health]\nprobe_misses = "three"\n')
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["sipshadow: config error: health.probe_misses: expected `int`, got `str`"]


def test_cli_rejects_a_bad_flag_and_a_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--member", "127.0.0.1:5070", "--listen", "nonsense"]) == 2
    assert main(["serve", "--config", str(tmp_path / "absent.toml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("sipshadow: config error: --listen:")
    assert lines[1].startswith("sipshadow: config error: --config: cannot read")


def test_not_toml_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_file(write(tmp_path, "[service\n"))


def test_defaults_need_only_members() -> None:
    config = build(ConfigFile(), members=["127.0.0.1:5070"])
    assert config.listen == ("127.0.0.1", 5060) and config.status_file is None


def test_an_early_timeout_below_timer_c_is_allowed_with_a_warning_naming_the_key() -> None:
    file = msgspec.toml.decode(b'[cluster]\nmembers = ["h:5060"]\n[dialogs]\nearly_timeout_s = 180', type=ConfigFile)
    (warning,) = build(file).warnings
    assert warning.startswith("dialogs.early_timeout_s = 180 ") and "Timer C" in warning
    assert build(msgspec.toml.decode(b'[cluster]\nmembers = ["h:5060"]', type=ConfigFile)).warnings == ()


def test_members_as_sip_uris_pick_their_transport_and_tcp_limits_are_read(tmp_path: Path) -> None:
    text = """
[cluster]
members = ["127.0.0.1:5070", "sip:127.0.0.1:5071;transport=tcp", "sip:192.0.2.9;transport=UDP"]
[tcp]
connections = 100
partial_timeout_s = 2.5
large_requests_over_tcp = false
"""
    config = build(load_file(write(tmp_path, text)))
    members = [(m.address, m.transport) for m in config.gateway.members]
    assert members == [(("127.0.0.1", 5070), "udp"), (("127.0.0.1", 5071), "tcp"), (("192.0.2.9", 5060), "udp")]
    assert (config.tcp.connections, config.tcp.partial_timeout_s) == (100, 2.5)
    assert config.gateway.large_requests_over_tcp is False
    flagged = build(load_file(write(tmp_path, "")), members=["sip:[::1]:7000;transport=tcp"])
    assert [(m.address, m.transport) for m in flagged.gateway.members] == [(("::1", 7000), "tcp")]


def test_keepalived_as_the_detector_needs_tap_input_and_says_so_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text('[cluster]\nmembers = ["127.0.0.1:5070"]\n[replication]\nrole = "shadow"\n'
                    'listen = "127.0.0.1:7000"\npeer = "127.0.0.1:7001"\nkey = "0123456789abcdef0123"\n'
                    'detector = "keepalived"\n')  # fmt: skip
    with pytest.raises(ConfigError) as refused:
        build(load_file(path))
    assert refused.value.key == "replication.detector" and 'input = "tap"' in str(refused.value)
    path.write_text(path.read_text().replace('detector = "keepalived"', 'detector = "vrrp"'))
    with pytest.raises(ConfigError, match="expected one of heartbeat, keepalived"):
        build(load_file(path))
