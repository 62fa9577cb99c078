"""Every RFC 4475 torture message through a real `sipshadow serve`, held to what a proxy must do.

The ALG runs in a network namespace of its own with only `lo` up: the messages' Vias name
TEST-NET hosts and example.com names, and a reply to them must land here, not be routed out.
Those addresses are made local on `lo` inside the namespace (names through its /etc/hosts),
and each message is sent from the address its top Via names, so a reply to the Via and a
reply to the source reach the same socket. The one cluster member is a plain UDP socket, so
what is forwarded is seen byte for byte, and a packet socket on `lo` records everything the
ALG sends, so "dropped" means nothing left it at all. After each message an OPTIONS to the ALG
itself is sent and awaited: the ALG handles datagrams in order, so once that 200 is back the
message's whole outcome is on the wire, and the next status file written holds its counters.

The expectations (one row per file) are in `rfc4475_cases.py`; README.md carries the table.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sipshadow.lab.alg import AlgProcess
from sipshadow.lab.bed.testbed import NETNS_DIR, down_all, new_prefix, run_checked
from sipshadow.lab.sipp import free_port
from sipshadow.runtime.status import StatusDocument

from .rfc4475_cases import CASES, MEMBER, Answered, Case, Dropped, Forwarded, markdown_rows

#: A byte-exact copy of `../shared/rfc4475/` (CRLFs, NULs and folds are the test), kept in the
#: repository so a clean clone runs it; `.gitattributes` there marks the files binary.
TORTURE_DIR = Path(__file__).resolve().parents[1] / "data" / "rfc4475"
LOOP = "127.0.0.1"
NAMES_NET = "198.51.100."  # example.com names resolve here (TEST-NET-2), inside the namespace only
# No probes: the member stays quiet. It listens on UDP only, so long requests stay on UDP too
# (RFC 3261 §18.1.1 would send them over TCP; tests/integration/test_tcp_sipp.py shows that).
CONFIG = "[health]\nprobe_interval_ms = 0\n[tcp]\nlarge_requests_over_tcp = false\n[status]\ninterval_s = 0.02\n"
WAIT_S = 3.0
CLONE_NEWNET = 0x40000000
PACKET_OUTGOING = 4  # a looped packet also shows once as sent; keep only its arrival
COMPACT = {"v": "via", "i": "call-id", "l": "content-length", "t": "to", "f": "from", "m": "contact",
           "c": "content-type", "k": "supported", "s": "subject", "e": "content-encoding"}  # fmt: skip
NOT_SHOWN = frozenset({"requests", "responses", "keepalives"})  # moved by the sync OPTIONS too

Address = tuple[str, int]
T = TypeVar("T")


def unusable_reason() -> str | None:
    if not TORTURE_DIR.is_dir():
        return f"no torture messages at {TORTURE_DIR}"
    if os.geteuid() != 0:
        return "needs root: the ALG runs in a network namespace so that no reply leaves loopback"
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    return None


# -- the namespace ------------------------------------------------------------------------


def in_namespace(name: str, make: Callable[[], T]) -> T:
    """Run `make` in a thread that joined the namespace: sockets it opens stay there.

    setns(CLONE_NEWNET) moves only the calling thread, so the test process itself never leaves
    the host's namespace, and nothing else needs starting inside.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(NETNS_DIR / name, os.O_RDONLY)
            try:
                if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"setns {name}: {os.strerror(error)}")
            finally:
                os.close(fd)
            box["value"] = make()
        except BaseException as error:
            box["error"] = error

    thread = threading.Thread(target=run, name=f"setns-{name}")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def udp_socket(address: Address) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock


def sniffer() -> socket.socket:
    """A packet socket on `lo`: every IPv4 packet, whoever sends it and wherever it goes."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
    sock.bind(("lo", 0x0800))
    return sock


def drain(sock: socket.socket) -> list[tuple[bytes, Any]]:
    sock.setblocking(False)
    got: list[tuple[bytes, Any]] = []
    while True:
        try:
            got.append(sock.recvfrom(65535))
        except BlockingIOError:
            return got


def udp_from_port(packet: bytes, port: int) -> tuple[Address, bytes] | None:
    """(destination, payload) of a UDP packet sent from `port`, else None."""
    if len(packet) < 28 or packet[0] >> 4 != 4 or packet[9] != socket.IPPROTO_UDP:
        return None
    header = (packet[0] & 0x0F) * 4
    source_port, destination_port, length = struct.unpack_from("!HHH", packet, header)
    if source_port != port:
        return None
    return (socket.inet_ntoa(packet[16:20]), destination_port), packet[header + 8 : header + length]


# -- reading SIP, just enough to check ----------------------------------------------------


@dataclass
class Parsed:
    start: str
    lines: list[bytes]  # raw header lines, as sent
    headers: list[tuple[str, str]]  # (long lower-case name, unfolded value)
    body: bytes

    def values(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def vias(self) -> list[str]:
        return [part.strip() for value in self.values("via") for part in value.split(",") if part.strip()]


def parse(data: bytes) -> Parsed:
    end = data.find(b"\r\n\r\n")
    head, body = (data[:end], data[end + 4 :]) if end >= 0 else (data.rstrip(b"\r\n"), b"")
    raw = head.split(b"\r\n")
    unfolded: list[str] = []
    for line in raw[1:]:
        text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and unfolded:
            unfolded[-1] += " " + text.strip()
        else:
            unfolded.append(text)
    headers = []
    for line in unfolded:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        headers.append((COMPACT.get(key, key), value.strip()))
    return Parsed(raw[0].decode("latin-1"), raw[1:], headers, body)


def expected_body(original: Parsed) -> bytes:
    """The body a proxy passes on: Content-Length octets, or the rest of the datagram without one."""
    length = original.values("content-length")
    return original.body[: int(length[0])] if length else original.body


# -- the bed: namespace, member, ALG ------------------------------------------------------


def is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3


def sender_names() -> list[str]:
    """The host names (not addresses) the messages' top Vias name."""
    hosts = {case.sender.rpartition(":")[0] for case in CASES if case.sender != MEMBER}
    return sorted(host for host in hosts if not is_ipv4(host))


@dataclass
class Observation:
    """What the ALG did with one message."""

    sent: list[tuple[Address, bytes]]  # every datagram it sent (bar the sync OPTIONS' 200)
    member: list[bytes]  # what the member socket received
    client: list[bytes]  # what the client socket received
    delta: dict[str, int]  # counters that moved

    def describe(self) -> str:
        def first_line(data: bytes) -> str:
            return data.split(b"\r\n", 1)[0].decode("latin-1")

        moved = ", ".join(f"{key}+{value}" for key, value in sorted(self.delta.items()) if key not in NOT_SHOWN)
        sent = "; ".join(f"sent to {host}:{port} `{first_line(data)}`" for (host, port), data in self.sent)
        return f"{sent or 'nothing sent'} (counters: {moved or 'none moved'})"


class Bed:
    """One namespace, one member socket, one ALG; `run` feeds it a message and reports."""

    def __init__(self, workdir: Path) -> None:
        self.prefix = new_prefix()
        self.ns = f"{self.prefix}-rfc4475"
        self.etc = Path("/etc/netns") / self.ns  # `ip netns exec` mounts its hosts file over /etc/hosts
        self.workdir = workdir
        self.hosts = {name: f"{NAMES_NET}{index}" for index, name in enumerate(sender_names(), start=1)}
        self.sockets: list[socket.socket] = []
        self.alg: AlgProcess | None = None
        self.made_etc_netns = False
        self.sequence = 0

    def ip_of(self, host: str) -> str:
        return host if is_ipv4(host) else self.hosts[host]

    def open(self, make: Callable[[], socket.socket]) -> socket.socket:
        sock = in_namespace(self.ns, make)
        self.sockets.append(sock)
        return sock

    def up(self) -> None:
        run_checked(["ip", "netns", "add", self.ns])
        self.made_etc_netns = not self.etc.parent.exists()
        self.etc.mkdir(parents=True, exist_ok=True)
        lines = [f"{LOOP} localhost"] + [f"{address} {name}" for name, address in self.hosts.items()]
        (self.etc / "hosts").write_text("\n".join(lines) + "\n")
        local = {self.ip_of(case.sender.rpartition(":")[0]) for case in CASES if case.sender != MEMBER} - {LOOP}
        script = "link set lo up\n" + "".join(f"route add local {address}/32 dev lo\n" for address in sorted(local))
        run_checked(["ip", "-n", self.ns, "-batch", "-"], input=script)
        self.sniffer = self.open(sniffer)
        self.member = self.open(lambda: udp_socket((LOOP, 0)))
        self.marker = self.open(lambda: udp_socket((LOOP, 0)))
        self.member_address: Address = self.member.getsockname()
        port = free_port()
        while port == self.member_address[1]:
            port = free_port()
        self.alg_address: Address = (LOOP, port)
        self.alg = AlgProcess(self.alg_address, [self.member_address], self.workdir, config_text=CONFIG,
                              ready="none", netns=self.ns).start()  # fmt: skip
        self.sync(ready_timeout_s=10.0)

    def down(self) -> None:
        for sock in self.sockets:
            sock.close()
        try:
            if self.alg is not None:
                self.alg.stop()
        finally:
            down_all(self.prefix)
            shutil.rmtree(self.etc, ignore_errors=True)
            if self.made_etc_netns:
                with contextlib.suppress(OSError):
                    self.etc.parent.rmdir()  # /etc/netns, made by this run, if nothing else is in it

    def sync(self, ready_timeout_s: float = WAIT_S) -> dict[str, int]:
        """OPTIONS the ALG itself and wait for its 200 and a status file written after it; its counters."""
        assert self.alg is not None
        self.sequence += 1
        call_id = f"sync-{self.sequence}@{LOOP}"
        host, port = self.marker.getsockname()
        request = (
            f"OPTIONS sip:{self.alg_address[0]}:{self.alg_address[1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKsync{self.sequence};rport\r\n"
            f"Max-Forwards: 70\r\nFrom: <sip:sync@{host}>;tag=sync\r\nTo: <sip:{self.alg_address[0]}>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        ).encode()
        deadline = time.monotonic() + ready_timeout_s
        self.marker.settimeout(0.2)
        answered = False
        while not answered:
            exited = self.alg.process is not None and self.alg.process.poll() is not None
            if exited or time.monotonic() > deadline:
                state = "exited" if exited else "did not answer OPTIONS"
                raise AssertionError(f"the ALG {state}; its log:\n{self.alg.log_file.read_text()[-3000:]}")
            self.marker.sendto(request, self.alg_address)
            while not answered:
                try:
                    reply = self.marker.recv(65535)
                except TimeoutError:
                    break
                answered = reply.startswith(b"SIP/2.0 200") and call_id.encode() in reply
        replied_ns = time.time_ns()
        while True:
            try:
                if os.stat(self.alg.status_file).st_mtime_ns > replied_ns:
                    return numbers(self.alg.status())
            except (FileNotFoundError, ValueError):
                pass
            if time.monotonic() > deadline + WAIT_S:
                raise AssertionError("the ALG stopped writing its status file")
            time.sleep(0.005)

    def sniffed(self) -> list[tuple[Address, bytes]]:
        marker = self.marker.getsockname()
        sent = []
        for packet, address in drain(self.sniffer):
            found = udp_from_port(packet, self.alg_address[1])
            if address[2] != PACKET_OUTGOING and found is not None and found[0] != marker:
                sent.append(found)
        return sent

    def run(self, case: Case, data: bytes) -> tuple[Observation, Address | None]:
        before = self.sync()
        self.sniffed()
        drain(self.member)
        client: socket.socket | None = None
        client_address: Address | None = None
        if case.sender != MEMBER:
            host, _, port = case.sender.rpartition(":")
            client_address = (self.ip_of(host), int(port))
            client = in_namespace(self.ns, lambda: udp_socket(client_address))
        try:
            (client or self.member).sendto(data, self.alg_address)
            after = self.sync()
            observation = Observation(
                sent=self.sniffed(),
                member=[datagram for datagram, _ in drain(self.member)],
                client=[datagram for datagram, _ in drain(client)] if client else [],
                delta={key: value - before.get(key, 0) for key, value in after.items() if value != before.get(key, 0)},
            )
        finally:
            if client is not None:
                client.close()
        return observation, client_address


def numbers(status: StatusDocument) -> dict[str, int]:
    """The status counters as one flat dict (`rejected.400`, `internal_errors`, ...)."""
    assert status.counters is not None, status
    counters = asdict(status.counters)
    flat = {key: value for key, value in counters.items() if isinstance(value, int)}
    flat.update({f"rejected.{code}": count for code, count in status.counters.rejected.items()})
    flat["internal_errors"] = status.internal_errors or 0
    flat["send_errors"] = status.send_errors or 0
    return flat


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    """The namespace and the ALG, shared by every row; torn down whatever happens."""
    reason = unusable_reason()
    if reason:
        pytest.skip(reason)
    bed = Bed(tmp_path_factory.mktemp("rfc4475"))
    try:
        bed.up()
        yield bed
    finally:
        bed.down()


# -- the checks ---------------------------------------------------------------------------


def check_forwarded(bed: Bed, case: Case, expected: Forwarded, data: bytes, seen: Observation, why: str) -> None:
    assert len(seen.member) == 1 and seen.sent == [(bed.member_address, seen.member[0])] and not seen.client, why
    original, forwarded = parse(data), parse(seen.member[0])
    start = expected.start_line or original.start
    assert forwarded.start == start, f"{why}: Request-Line `{forwarded.start}`, expected `{start}`"
    vias, sent_by = forwarded.vias(), case.sender.rpartition(":")[0].lower()
    ours = rf"SIP/2\.0/UDP {re.escape(bed.alg_address[0])}:{bed.alg_address[1]};branch=z9hG4bKss[^;,\s]+(;.*)?"
    assert vias and re.fullmatch(ours, vias[0]), f"{why}: top Via is not the ALG's: {vias[:1]}"
    assert len(vias) == len(original.vias()) + 1, f"{why}: Via stack {vias}, sent {original.vias()}"
    assert sent_by in vias[1].lower(), f"{why}: the client's Via is not next: {vias[1]}"
    sent_max = original.values("max-forwards")
    hops = forwarded.values("max-forwards")
    wanted = [str(int(sent_max[0]) - 1)] if sent_max else ["70", "69"]  # §16.6 step 3: add one, SHOULD be 70
    assert len(hops) == 1 and hops[0] in wanted, f"{why}: Max-Forwards {hops}, expected one of {wanted}"
    body = expected_body(original)
    assert forwarded.body == body, f"{why}: body {forwarded.body[:80]!r}..., expected {body[:80]!r}..."
    for length in forwarded.values("content-length"):
        assert int(length) == len(forwarded.body), f"{why}: Content-Length {length} for {len(forwarded.body)} octets"
    for start_of_line in expected.keep:
        lines = [line for line in original.lines if line.startswith(start_of_line.encode())]
        assert lines, f"table error: {case.file} has no `{start_of_line}` line"
        for line in lines:
            assert line in forwarded.lines, f"{why}: `{line.decode('latin-1')}` did not reach the member as sent"
    for octets in expected.absent:
        assert octets.lower() not in seen.member[0].lower(), f"{why}: {octets!r} reached the member"
    for name in expected.no_headers:
        assert not forwarded.values(name.lower()), f"{why}: the forwarded request has a {name} header field"


def check_answered(case: Case, expected: Answered, seen: Observation, client: Address | None, why: str) -> None:
    codes = (expected.status, *expected.also_ok)
    assert not seen.member and len(seen.client) == 1 and seen.sent == [(client, seen.client[0])], why
    reply = parse(seen.client[0])
    status = reply.start.split(" ")[1] if reply.start.startswith("SIP/2.0 ") else reply.start
    assert status in {str(code) for code in codes}, f"{why}: answered `{reply.start}`"
    assert seen.delta.get(f"rejected.{status}") == 1, f"{why}: counters.rejected[{status}] did not move by one"
    listed = {tag.strip() for value in reply.values("unsupported") for tag in value.split(",")}
    assert set(expected.unsupported) <= listed, f"{why}: Unsupported lists {sorted(listed)}"
    assert not listed & set(expected.not_listed), f"{why}: Unsupported lists {sorted(listed)}"


def check_dropped(expected: Dropped, seen: Observation, why: str) -> None:
    assert not seen.sent and not seen.member and not seen.client, why
    assert seen.delta.get(expected.counter) == 1, f"{why}: counters.{expected.counter} did not move by one"
    assert not seen.delta.get("send_errors"), f"{why}: the ALG tried to send somewhere and failed"


def test_the_table_covers_every_message() -> None:
    if not TORTURE_DIR.is_dir():
        pytest.skip(f"no torture messages at {TORTURE_DIR}")
    files = sorted(path.name for path in TORTURE_DIR.glob("*.dat"))
    assert sorted(case.file for case in CASES) == files


@pytest.mark.parametrize("case", CASES, ids=[case.file.removesuffix(".dat") for case in CASES])
def test_torture_message(bed: Bed, case: Case) -> None:
    """The ALG does with the message what its RFC section asks of a proxy (see rfc4475_cases.py)."""
    data = (TORTURE_DIR / case.file).read_bytes()
    seen, client = bed.run(case, data)
    why = f"{case.file} (RFC 4475 §{case.section}): expected it {case.outcome.describe()}; {seen.describe()}"
    assert not seen.delta.get("internal_errors"), f"{why}: the core raised"
    outcome = case.outcome
    if isinstance(outcome, Forwarded):
        check_forwarded(bed, case, outcome, data, seen, why)
    elif isinstance(outcome, Answered):
        check_answered(case, outcome, seen, client, why)
    else:
        check_dropped(outcome, seen, why)


def test_readme_table_is_the_case_table() -> None:
    """README.md's table is rendered from `CASES`, so the documented verdicts are the tested ones."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    table = [line for line in readme.splitlines() if line.startswith("| `") and ".dat` | " in line]
    assert table == markdown_rows()
