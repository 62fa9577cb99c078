"""Real SIP user agents from Debian through a real `sipshadow serve` on loopback.

sipsak (package `sipsak`) sends OPTIONS, a traceroute, a small flood and a MESSAGE through the
ALG; two baresip instances (package `baresip-core`) place a call through it, with the ALG as
the caller's outbound proxy and the callee itself as the one cluster member, hold it with a
re-INVITE, and hang it up. Each test skips with the reason when its binary (or a baresip
module it needs) is missing, runs for a few seconds, and stops every process it started.

Two quirks of the Debian builds, not of the ALG, shape the commands: sipsak 0.9.8.1 cuts the
last digit of a five-digit port in the URIs it writes (`sip:x@127.0.0.1:15060` goes out as
`...:1506`), so its target is given with `-p` (the outbound proxy) or in a message file; and
its `-M`/`-I` usrloc modes crash (SIGSEGV) whatever the target, so the MESSAGE is sent with
`-f`. baresip's `ausine` source runs at 48 kHz only, hence opus rather than G.711.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from sipshadow.core.counters import Counters
from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.sipp import SippUas, free_port
from sipshadow.runtime.status import StatusDocument
from tests.conftest import FAST_PROBES
from tests.integration.sip_peers import HOST, UdpPeer, build_response

pytestmark = pytest.mark.timeout(90)

SIPSAK = shutil.which("sipsak")
BARESIP = shutil.which("baresip")
BARESIP_MODULE_DIRS = (
    "/usr/lib/baresip/modules",
    "/usr/lib/x86_64-linux-gnu/baresip/modules",
    "/usr/local/lib/baresip/modules",
)
BARESIP_MODULES = ("opus", "ausine", "aubridge", "account", "menu", "ctrl_tcp")

needs_sipsak = pytest.mark.skipif(SIPSAK is None, reason="sipsak is not installed (Debian package sipsak)")

#: Counters that must not move when real, well-behaved agents talk through the ALG.
ERROR_COUNTERS = ("malformed_requests", "malformed_responses", "stray_responses", "forged_responses", "unroutable_acks",
                  "response_loops")  # fmt: skip
ERROR_TOTALS = ("internal_errors", "send_errors", "send_failures")


# -- helpers ------------------------------------------------------------------------------


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


def status_now(alg: AlgProcess) -> StatusDocument:
    """A status document written after this call began (the file is rewritten every 0.1 s)."""

    def written() -> int:
        try:
            return alg.status_file.stat().st_mtime_ns
        except OSError:
            return 0

    before = written()
    wait_for(lambda: written() != before, 3.0, "the ALG's status file to be rewritten", 0.02)
    for _ in range(50):
        with contextlib.suppress(OSError, ValueError):
            return alg.status()
        time.sleep(0.02)
    return alg.status()


def assert_no_errors(status: StatusDocument) -> None:
    counters = asdict(status.counters)
    moved = {name: counters[name] for name in ERROR_COUNTERS if counters[name]}
    moved |= {name: getattr(status, name) for name in ERROR_TOTALS if getattr(status, name)}
    assert not moved, f"error counters moved: {moved}"


def active_calls(status: StatusDocument) -> int:
    return sum(member.active_calls for member in status.members)


def sipsak(*args: str, timeout_s: float = 20.0) -> subprocess.CompletedProcess[str]:
    assert SIPSAK is not None
    return subprocess.run(
        [SIPSAK, *args], capture_output=True, text=True, timeout=timeout_s, check=False, stdin=subprocess.DEVNULL
    )


def outcome(result: subprocess.CompletedProcess[str]) -> str:
    return f"sipsak exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-2000:]}"


# -- sipsak through the ALG in front of two SIPp members ----------------------------------


@needs_sipsak
@pytest.mark.sipp
def test_sipsak_options_reaches_a_member_and_its_200_comes_back(alg: AlgProcess, members: list[SippUas]) -> None:
    port = alg.listen[1]
    result = sipsak("-vv", "-s", f"sip:someone@{HOST}", "-p", f"{HOST}:{port}")
    assert result.returncode == 0, outcome(result)
    assert "SIP/2.0 200 OK" in result.stdout, outcome(result)
    member_contacts = {
        f"<sip:{host}:{member_port};transport=UDP>" for host, member_port in (m.address for m in members)
    }
    assert any(contact in result.stdout for contact in member_contacts), outcome(result)  # a member answered
    status = status_now(alg)
    assert status.counters.rejected == {}, status.counters
    assert_no_errors(status)


@needs_sipsak
@pytest.mark.sipp
def test_sipsak_traceroute_sees_the_alg_answer_483_then_the_member_answer_200(alg: AlgProcess) -> None:
    port = alg.listen[1]
    result = sipsak("-vv", "-T", "-s", f"sip:someone@{HOST}", "-p", f"{HOST}:{port}")
    assert result.returncode == 0, outcome(result)
    lines = result.stdout.splitlines()
    hop_483 = next((i for i, line in enumerate(lines) if "SIP/2.0 483" in line), None)
    hop_200 = next((i for i, line in enumerate(lines) if "SIP/2.0 200" in line), None)
    assert hop_483 is not None and hop_200 is not None and hop_483 < hop_200, outcome(result)
    status = status_now(alg)
    assert status.counters.rejected == {483: 1}, status.counters  # Max-Forwards 0 stops at the ALG
    assert_no_errors(status)


@needs_sipsak
@pytest.mark.sipp
def test_sipsak_flood_is_forwarded_request_by_request_and_every_answer_relayed(alg: AlgProcess) -> None:
    port = alg.listen[1]
    before = status_now(alg).counters
    flood = 50
    result = sipsak("-F", "-e", str(flood), "-s", f"sip:someone@{HOST}", "-p", f"{HOST}:{port}")
    assert result.returncode == 0 and "flood end reached" in result.stdout, outcome(result)

    def counted() -> Counters | None:
        counters = status_now(alg).counters
        grew = counters.requests - before.requests >= flood
        return counters if grew and counters.responses - before.responses >= flood else None

    counters = wait_for(counted, 5.0, f"{flood} OPTIONS forwarded and {flood} answers relayed")
    assert counters.rejected == {}, counters
    assert_no_errors(status_now(alg))


@needs_sipsak
def test_sipsak_message_from_a_file_reaches_the_member_whole_and_gets_its_200(tmp_path: Path) -> None:
    with UdpPeer("member", answer_options=True) as member:
        process = AlgProcess((HOST, free_port()), [member.address], tmp_path, config_text=FAST_PROBES)
        with process as alg:
            port = alg.listen[1]
            message = tmp_path / "message.sip"
            body = "hello through the ALG"
            message.write_text(  # sipsak adds its Via and turns the LFs into CRLFs
                f"MESSAGE sip:bob@{HOST}:{port} SIP/2.0\n"
                f"From: <sip:sipsak@{HOST}>;tag=sipsak-message\n"
                f"To: <sip:bob@{HOST}:{port}>\n"
                f"Call-ID: sipsak-message-{port}@{HOST}\n"
                "CSeq: 1 MESSAGE\nMax-Forwards: 70\nContent-Type: text/plain\n"
                f"Content-Length: {len(body)}\n\n{body}"
            )
            client = subprocess.Popen(
                [SIPSAK or "sipsak", "-vv", "-f", str(message), "-s", f"sip:bob@{HOST}:{port}"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
            )  # fmt: skip
            try:
                forwarded = member.expect("MESSAGE ", timeout=5.0, note="sipsak's MESSAGE through the ALG")
                assert forwarded.body == body.encode(), forwarded.describe()
                assert forwarded.first("max-forwards") == "69", forwarded.describe()
                assert len(forwarded.values("via")) == 2, forwarded.describe()  # the ALG's above sipsak's
                member.send(build_response(forwarded, 200, "OK", to_tag="bob"), forwarded.source)
                stdout, stderr = client.communicate(timeout=15)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
            assert client.returncode == 0 and "SIP/2.0 200 OK" in stdout, (
                f"exit {client.returncode}\n{stdout}\n{stderr}"
            )
            status = status_now(alg)
            assert status.counters.calls == 0 and status.dialogs == 0, status  # a MESSAGE opens no dialog
            assert_no_errors(status)


@needs_sipsak
def test_sipsak_options_to_the_alg_itself_is_answered_by_the_alg(tmp_path: Path) -> None:
    with (
        UdpPeer("member", answer_options=True) as member,
        AlgProcess((HOST, free_port()), [member.address], tmp_path, config_text=FAST_PROBES) as alg,
    ):
        port = alg.listen[1]
        keepalive = tmp_path / "keepalive.sip"
        keepalive.write_text(
            f"OPTIONS sip:{HOST}:{port} SIP/2.0\nFrom: <sip:sipsak@{HOST}>;tag=ka\nTo: <sip:{HOST}:{port}>\n"
            f"Call-ID: sipsak-keepalive-{port}@{HOST}\nCSeq: 1 OPTIONS\nMax-Forwards: 70\nContent-Length: 0\n\n"
        )
        result = sipsak("-vv", "-f", str(keepalive), "-s", f"sip:{HOST}:{port}")
        assert result.returncode == 0 and "SIP/2.0 200" in result.stdout, outcome(result)
        assert "Allow: INVITE" in result.stdout, outcome(result)  # the ALG's own answer
        member.expect_nothing(0.3, note="an OPTIONS for the ALG itself is not forwarded")
        status = status_now(alg)
        assert status.counters.rejected == {}, status.counters
        assert_no_errors(status)


# -- baresip: a real call through the ALG ------------------------------------------------


def baresip_module_dir() -> str | None:
    for directory in BARESIP_MODULE_DIRS:
        if all(os.path.exists(f"{directory}/{name}.so") for name in BARESIP_MODULES):
            return directory
    return None


needs_baresip = pytest.mark.skipif(
    BARESIP is None or baresip_module_dir() is None,
    reason="baresip with the opus, ausine, aubridge, account, menu and ctrl_tcp modules is not installed "
    "(Debian package baresip-core)",
)


def free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def free_sip_port() -> int:
    """A port free for baresip's UDP and TCP listeners, with the next one free for its TLS one."""
    for _ in range(50):
        port = free_port()
        try:
            with (
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
                socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tls,
            ):
                tcp.bind((HOST, port))
                tls.bind((HOST, port + 1))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for baresip")


class Baresip:
    """One baresip on loopback, driven over its ctrl_tcp socket (JSON in netstrings)."""

    def __init__(self, workdir: Path, name: str, account: str) -> None:
        self.name = name
        self.dir = workdir / f"baresip-{name}"
        self.sip_port = free_sip_port()
        self.ctrl_port = free_tcp_port()
        self.account = account
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.dir / "baresip.log"

    def write_config(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "config").write_text(
            "poll_method\tepoll\n"
            f"sip_listen\t{HOST}:{self.sip_port}\n"
            f"net_interface\t{HOST}\n"
            f"audio_player\taubridge,nil-{self.name}\naudio_alert\taubridge,nil-{self.name}\n"
            "audio_source\tausine,440\n"
            f"module_path\t{baresip_module_dir()}\n"
            "module\topus.so\nmodule\tausine.so\nmodule\taubridge.so\n"
            "module_tmp\taccount.so\nmodule_app\tmenu.so\nmodule_app\tctrl_tcp.so\n"
            f"ctrl_tcp_listen\t{HOST}:{self.ctrl_port}\n"
        )
        (self.dir / "accounts").write_text(self.account + "\n")
        (self.dir / "contacts").write_text("")

    def start(self) -> Baresip:
        self.write_config()
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [BARESIP or "baresip", "-f", str(self.dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        wait_for(self._answers, 10.0, f"baresip {self.name} to answer on its control socket", 0.1)
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"baresip {self.name} exited {self.process.returncode}: {self.log.read_text()[-2000:]}")
        try:
            self.command("listcalls", timeout_s=0.5)
        except OSError:
            return False
        return True

    def command(self, name: str, params: str = "", timeout_s: float = 3.0) -> str:
        """Run one command; returns its `data` text (events on the socket are skipped)."""
        token = f"{name}-{time.monotonic_ns()}"
        payload = json.dumps({"command": name, "params": params, "token": token}).encode()
        with socket.create_connection((HOST, self.ctrl_port), timeout=timeout_s) as sock:
            sock.sendall(str(len(payload)).encode() + b":" + payload + b",")
            buffer = b""
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                while b":" in buffer:
                    length_text, rest = buffer.split(b":", 1)
                    length = int(length_text)
                    if len(rest) < length + 1:
                        break
                    message, buffer = json.loads(rest[:length]), rest[length + 1 :]
                    if message.get("response") and message.get("token") == token:
                        return str(message.get("data", ""))
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
        raise OSError(f"baresip {self.name}: no answer to {name!r}")

    def calls(self) -> str:
        return self.command("listcalls")

    def established(self) -> bool:
        return "ESTABLISHED" in self.calls()

    def idle(self) -> bool:
        return "Active calls (0)" in self.calls()

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(OSError):
            self.command("quit", timeout_s=1.0)
        try:
            process.wait(3.0)  # quitting with a call up waits for its BYE transaction: do not wait for that
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5.0)

    def log_tail(self) -> str:
        try:
            return self.log.read_text(errors="replace")[-3000:]
        except OSError:
            return ""


@pytest.fixture
def call_bed(tmp_path: Path) -> Iterator[tuple[AlgProcess, Baresip, Baresip]]:
    """Callee bob (auto-answer) is the ALG's one member; caller alice has the ALG as outbound proxy."""
    bob = Baresip(tmp_path, "bob", f"<sip:bob@{HOST}>;regint=0;answermode=auto")
    alice: Baresip | None = None
    try:
        bob.start()
        alg = AlgProcess((HOST, free_port()), [(HOST, bob.sip_port)], tmp_path, config_text=FAST_PROBES)
        with alg:
            alice = Baresip(tmp_path, "alice", f'<sip:alice@{HOST}>;outbound="sip:{HOST}:{alg.listen[1]}";regint=0')
            alice.start()
            yield alg, alice, bob
    finally:
        if alice is not None:
            alice.stop()
        bob.stop()


def place_call(alg: AlgProcess, alice: Baresip, bob: Baresip) -> None:
    alice.command("dial", f"sip:bob@{HOST}:{bob.sip_port}")
    wait_for(lambda: alice.established() and bob.established(), 10.0, "the call to be established on both sides")
    wait_for(lambda: active_calls(status_now(alg)) == 1, 3.0, "the ALG to count the call active")


def hang_up_from_the_callee_and_check_the_end(alg: AlgProcess, alice: Baresip, bob: Baresip) -> None:
    bob.command("hangup")
    try:
        wait_for(alice.idle, 5.0, "the callee's BYE to reach the caller")
        wait_for(bob.idle, 5.0, "the callee to see its call ended")
    except AssertionError as error:
        calls = f"alice: {alice.calls()}\nbob: {bob.calls()}"
        raise AssertionError(f"{error}\n{calls}\nalice's log:\n{alice.log_tail()}") from None

    def ended() -> StatusDocument | None:
        status = status_now(alg)
        return status if active_calls(status) == 0 else None

    status = wait_for(ended, 3.0, "active_calls back to 0 in the ALG's status")
    assert status.counters.calls == 1 and status.counters.rejected == {}, status.counters
    assert_no_errors(status)


@needs_baresip
@pytest.mark.parametrize("holder", ["caller", "callee"])
def test_baresip_call_held_and_resumed_then_hung_up_by_the_callee(
    call_bed: tuple[AlgProcess, Baresip, Baresip], holder: str
) -> None:
    """Hold and resume are re-INVITEs from either side; the callee's must reach the caller, and
    so must its ACK and the callee's BYE afterwards (a callee's re-INVITE once made the ALG
    store a mirrored dialog and send them back to the member)."""
    alg, alice, bob = call_bed
    place_call(alg, alice, bob)
    agent = alice if holder == "caller" else bob
    agent.command("hold")  # re-INVITE a=sendonly
    time.sleep(1.0)
    agent.command("resume")
    time.sleep(1.0)
    assert alice.established() and bob.established(), (alice.calls(), bob.calls())
    hang_up_from_the_callee_and_check_the_end(alg, alice, bob)
