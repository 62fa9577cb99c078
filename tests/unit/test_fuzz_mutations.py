"""The live-traffic fuzzer's pure parts (`sipshadow.lab.fuzz`): reading SIPp's message trace,
keeping mutated copies out of real dialogs, and the mutation strategy. No sockets."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sipshadow.lab.fuzz import (
    OPERATORS,
    UDP_MAX,
    Mutation,
    Operator,
    StopFuzzing,
    corpus_from_sipp_trace,
    for_each_mutation,
    fuzz_call_id,
    lie_content_length,
    long_header_line,
    mutations,
    run_fuzzer,
)

#: The first three entries of a real `-trace_msg` file: SIPp 3.6.1's built-in uac, two calls
#: at 2/s to its built-in uas on 127.0.0.1:25060 (`sipp -sn uac 127.0.0.1:25060 -i 127.0.0.1
#: -p 25061 -m 2 -r 2 -trace_msg -message_file uac_msg.log`). The file holds each message's
#: CRLFs as sent; here every message line ends in an escaped \r before the source's newline.
SAMPLE_TRACE = b"""\
----------------------------------------------- 2026-11-30 03:21:58.959572
UDP message sent (514 bytes):

INVITE sip:service@127.0.0.1:25060 SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:25061;branch=z9hG4bK-15580-1-0\r
From: sipp <sip:sipp@127.0.0.1:25061>;tag=15580SIPpTag001\r
To: service <sip:service@127.0.0.1:25060>\r
Call-ID: 1-15580@127.0.0.1\r
CSeq: 1 INVITE\r
Contact: sip:sipp@127.0.0.1:25061\r
Max-Forwards: 70\r
Subject: Performance Test\r
Content-Type: application/sdp\r
Content-Length:   129\r
\r
v=0\r
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r
s=-\r
c=IN IP4 127.0.0.1\r
t=0 0\r
m=audio 6016 RTP/AVP 0\r
a=rtpmap:0 PCMU/8000\r

----------------------------------------------- 2026-11-30 03:21:58.959860
UDP message received [313] bytes :

SIP/2.0 180 Ringing\r
Via: SIP/2.0/UDP 127.0.0.1:25061;branch=z9hG4bK-15580-1-0\r
From: sipp <sip:sipp@127.0.0.1:25061>;tag=15580SIPpTag001\r
To: service <sip:service@127.0.0.1:25060>;tag=15578SIPpTag011\r
Call-ID: 1-15580@127.0.0.1\r
CSeq: 1 INVITE\r
Contact: <sip:127.0.0.1:25060;transport=UDP>\r
Content-Length: 0\r
\r

----------------------------------------------- 2026-11-30 03:21:58.961078
UDP message sent (364 bytes):

ACK sip:service@127.0.0.1:25060 SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:25061;branch=z9hG4bK-15580-1-5\r
From: sipp <sip:sipp@127.0.0.1:25061>;tag=15580SIPpTag001\r
To: service <sip:service@127.0.0.1:25060>;tag=15578SIPpTag011\r
Call-ID: 1-15580@127.0.0.1\r
CSeq: 1 ACK\r
Contact: sip:sipp@127.0.0.1:25061\r
Max-Forwards: 70\r
Subject: Performance Test\r
Content-Length: 0\r
\r

"""
#: The same run's next entry, cut off the way a trace is when SIPp is killed mid-write.
CUT_OFF = b"""\
----------------------------------------------- 2026-11-30 03:21:58.967720
UDP message sent (364 bytes):

BYE sip:service@127.0.0.1:25060 SIP/2.0\r
Via: SIP/2.0/UDP 127.0.0.1:25061;branch=z9hG4bK-15580-1-7\r
"""
REAL_CALL_ID = b"1-15580@127.0.0.1"


def applied(operator: Operator, message: bytes) -> st.SearchStrategy[bytes]:
    """`operator` applied to `message`, as a strategy (operators draw with hypothesis' draw)."""
    return st.composite(lambda draw: operator(message, draw))()


def parse(tmp_path: Path, text: bytes) -> list[bytes]:
    trace = tmp_path / "uac_msg.log"
    trace.write_bytes(text)
    return corpus_from_sipp_trace(trace)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return parse(tmp_path_factory.mktemp("trace"), SAMPLE_TRACE)


def test_trace_gives_sent_and_received_messages_byte_for_byte(corpus: list[bytes]) -> None:
    assert [len(message) for message in corpus] == [514, 313, 364]  # SIPp's own counts
    assert [message.split(b" ", 1)[0] for message in corpus] == [b"INVITE", b"SIP/2.0", b"ACK"]
    assert corpus[1].startswith(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:25061;branch=z9hG4bK-15580-1-0\r\n")
    for message in corpus:
        assert re.search(rb"[^\r]\n", message) is None  # every line ends in CRLF
    assert corpus[0].endswith(
        b"\r\n\r\nv=0\r\no=user1 53655765 2353687637 IN IP4 127.0.0.1\r\ns=-\r\n"
        b"c=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6016 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    )


def test_trace_with_crlf_turned_into_lf_gives_the_same_messages(tmp_path: Path, corpus: list[bytes]) -> None:
    assert parse(tmp_path, SAMPLE_TRACE.replace(b"\r\n", b"\n")) == corpus


def test_trace_cut_off_mid_message_loses_only_that_message(tmp_path: Path, corpus: list[bytes]) -> None:
    assert parse(tmp_path, SAMPLE_TRACE + CUT_OFF) == corpus
    assert parse(tmp_path, b"garbage\n" + SAMPLE_TRACE[:-400]) == corpus[:2]


def test_call_id_is_replaced_in_long_and_compact_form(corpus: list[bytes]) -> None:
    fuzzed = fuzz_call_id(corpus[0], 7)
    assert REAL_CALL_ID not in fuzzed
    assert b"\r\nCall-ID: fuzz-7@sipshadow.invalid\r\n" in fuzzed
    assert fuzzed.replace(b"fuzz-7@sipshadow.invalid", REAL_CALL_ID) == corpus[0]  # nothing else moved
    compact = corpus[1].replace(b"Call-ID: ", b"i:")
    assert b"\r\nCall-ID: fuzz--3@sipshadow.invalid\r\n" in fuzz_call_id(compact, -3)
    assert REAL_CALL_ID not in fuzz_call_id(compact.replace(b"i:", b"I :"), 0)


def test_call_id_rewrite_leaves_the_body_alone_and_adds_one_where_missing() -> None:
    message = b"MESSAGE sip:a@127.0.0.1 SIP/2.0\r\nCall-ID: x\r\n  folded\r\nContent-Length: 7\r\n\r\ni: body"
    assert fuzz_call_id(message, 1) == (
        b"MESSAGE sip:a@127.0.0.1 SIP/2.0\r\nCall-ID: fuzz-1@sipshadow.invalid\r\nContent-Length: 7\r\n\r\ni: body"
    )
    assert fuzz_call_id(b"OPTIONS sip:a SIP/2.0\r\nCSeq: 1 OPTIONS\r\n\r\n", 2) == (
        b"OPTIONS sip:a SIP/2.0\r\nCall-ID: fuzz-2@sipshadow.invalid\r\nCSeq: 1 OPTIONS\r\n\r\n"
    )


@settings(max_examples=100, deadline=None)
@given(data=st.data())
def test_mutated_messages_are_datagrams_unlike_any_real_message(corpus: list[bytes], data: st.DataObject) -> None:
    message = data.draw(mutations(corpus))
    assert isinstance(message, bytes) and len(message) <= UDP_MAX
    assert message not in corpus
    assert REAL_CALL_ID not in message  # never a real call's Call-ID


def test_every_operator_is_used_within_200_messages(corpus: list[bytes]) -> None:
    used: set[str] = set()
    for_each_mutation(corpus, count=200, seed=0, consume=lambda m: used.update(m.operators))
    assert used == {operator.__name__ for operator in OPERATORS}


def test_same_seed_draws_the_same_messages(corpus: list[bytes]) -> None:
    def draw(seed: int) -> list[Mutation]:
        drawn: list[Mutation] = []
        for_each_mutation(corpus, count=40, seed=seed, consume=drawn.append)
        return drawn

    first = draw(11)
    assert len(first) == 40 and draw(11) == first and draw(12) != first


def test_stop_fuzzing_ends_the_run_early(corpus: list[bytes]) -> None:
    taken: list[Mutation] = []

    def take(mutation: Mutation) -> None:
        if len(taken) == 10:
            raise StopFuzzing
        taken.append(mutation)

    for_each_mutation(corpus, count=1000, seed=1, consume=take)
    assert len(taken) == 10


@settings(max_examples=50, deadline=None)
@given(data=st.data())
def test_content_length_lies(corpus: list[bytes], data: st.DataObject) -> None:
    invite = corpus[0]
    lied = data.draw(applied(lie_content_length, invite))
    assert lied.count(b"Content-Length:") == 1 and re.search(rb"Content-Length:[ \t]*129\r\n", lied) is None
    assert lied.endswith(invite[invite.index(b"\r\n\r\n") :])  # the body stays as it was


@settings(max_examples=20, deadline=None)
@given(data=st.data())
def test_long_header_line_is_10_kb_or_more(corpus: list[bytes], data: st.DataObject) -> None:
    longest = max(data.draw(applied(long_header_line, corpus[1])).split(b"\r\n"), key=len)
    assert 10_000 <= len(longest) <= UDP_MAX


def test_fuzzer_refuses_a_target_off_loopback_and_off_the_test_bed(corpus: list[bytes]) -> None:
    with pytest.raises(ValueError, match="loopback"):
        run_fuzzer(("192.0.2.1", 5060), corpus, seconds=1, rate=1, seed=0)
    with pytest.raises(ValueError, match="IP address"):
        run_fuzzer(("sip.example.com", 5060), corpus, seconds=1, rate=1, seed=0)
