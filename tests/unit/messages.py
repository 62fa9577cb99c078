"""Builders of SIP messages for core tests: a caller, a member, and the gateway between."""

from __future__ import annotations

ALG = ("192.0.2.1", 5060)
CALLER = ("192.0.2.10", 5070)
MEMBERS = (("192.0.2.21", 5080), ("192.0.2.22", 5080))


def request(
    method: str,
    *,
    call_id: str = "call-1@caller",
    cseq: int = 1,
    from_tag: str = "caller-tag",
    to_tag: str | None = None,
    branch: str = "z9hG4bKcaller1",
    uri: str = "sip:bob@192.0.2.1:5060",
    via_host: str = "192.0.2.10:5070",
    cseq_method: str | None = None,
    extra: tuple[str, ...] = (),
    body: str = "",
    max_forwards: str | None = "70",
) -> bytes:
    to = "<sip:bob@example.org>" + (f";tag={to_tag}" if to_tag else "")
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {via_host};branch={branch}",
        f'From: "Alice" <sip:alice@example.org>;tag={from_tag}',
        f"To: {to}",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} {cseq_method or method}",
        "Contact: <sip:alice@192.0.2.10:5070>",
        *([f"Max-Forwards: {max_forwards}"] if max_forwards is not None else []),
        *extra,
        f"Content-Length: {len(body)}",
        "",
        body,
    ]
    return "\r\n".join(lines).encode()


def response_to(forwarded: bytes, status: int, reason: str, *, to_tag: str | None = "callee-tag") -> bytes:
    """What a member answers to a request the gateway forwarded: its Vias, From, To, Call-ID, CSeq."""
    head = forwarded.split(b"\r\n\r\n", 1)[0].decode()
    kept = []
    for line in head.split("\r\n")[1:]:
        name = line.split(":", 1)[0].strip().lower()
        if name == "to" and to_tag and ";tag=" not in line:
            line = f"{line};tag={to_tag}"
        if name in ("via", "from", "to", "call-id", "cseq", "record-route"):
            kept.append(line)
    return "\r\n".join([f"SIP/2.0 {status} {reason}", *kept, "Content-Length: 0", "", ""]).encode()
