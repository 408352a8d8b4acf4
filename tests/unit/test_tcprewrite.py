"""The FTP ALG's engine: PORT/EPRT parsing (RFC 959, RFC 2428), sequence adjustment, segment-level line rewriting.

Hostile input first: random bytes, truncated and lying headers, absurd
options, hostile ACKs and SYNs never raise and never corrupt the stream that
the other side receives. Then the properties the issue names: a random
command stream split at random points (and with retransmissions thrown in)
reaches the receiver exactly as the whole stream rewritten at once; SEQ/ACK
arithmetic wraps at 2^32. Checksums are judged by scapy, over the
pseudo-header the packet was first computed on (the client module computes
it over the global address while the IP header still says private).
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP

from netwire.ftp import data_rewriter, might_be_data_command, parse_data_command
from netwire.seqadjust import SEQ_MOD, SeqMap, seq_add, seq_diff, unwrap
from netwire.tcprewrite import LineRewriter, rewrite_segment

PRIVATE, GLOBAL, SERVER = "10.0.0.1", "203.0.113.1", "203.0.113.100"


def port_for(port: int) -> int:
    return 20000 + port % 16


def rewriter(counters: Counter | None = None) -> LineRewriter:
    counters = counters if counters is not None else Counter()
    return LineRewriter(data_rewriter(PRIVATE, GLOBAL, port_for, counters), might_be_data_command, counters=counters)


def full_rewrite(stream: bytes) -> bytes:
    """The oracle: every complete line rewritten at once, as if the stream were one segment."""
    rewrite = data_rewriter(PRIVATE, GLOBAL, port_for, Counter())
    return b"".join(rewrite(line) or line for line in stream.splitlines(keepends=True))


def tcp(seq: int, payload: bytes = b"", *, flags: str = "PA", ack: int = 0, options=(), src: str = PRIVATE,
        pseudo_src: str | None = None) -> bytes:
    """An IPv4/TCP packet; ``pseudo_src`` computes the checksum over another source (as pre-compensation does)."""
    pkt = IP(src=pseudo_src or src, dst=SERVER) / TCP(sport=20000, dport=21, seq=seq, ack=ack, flags=flags,
                                                      options=list(options)) / payload
    raw = bytearray(bytes(pkt))
    raw[12:16] = bytes(IP(src=src, dst=SERVER))[12:16]
    raw[10:12] = b"\x00\x00"
    raw[10:12] = _ip_checksum(bytes(raw[:20]))
    return bytes(raw)


def _ip_checksum(header: bytes) -> bytes:
    total = sum(int.from_bytes(header[i:i + 2], "big") for i in range(0, 20, 2) if i != 10)
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total & 0xFFFF).to_bytes(2, "big")


def checksum_over(raw: bytes, pseudo_src: str) -> bool:
    """scapy's TCP checksum of the segment over ``pseudo_src`` equals the one in the packet; IP header verifies."""
    pkt = IP(raw)
    probe = IP(src=pseudo_src, dst=pkt.dst) / pkt[TCP].copy()
    del probe[TCP].chksum
    header = IP(raw)
    del header.chksum
    return IP(bytes(probe))[TCP].chksum == pkt[TCP].chksum and IP(bytes(header)).chksum == pkt.chksum \
        and pkt.len == len(raw)


# ---------------------------------------------------------------- attacks first


@settings(max_examples=300, deadline=None)
@given(junk=st.binary(max_size=120))
def test_random_bytes_as_a_packet_never_raise_and_are_left_alone(junk):
    counters = Counter()
    out = rewrite_segment(junk, rewriter(counters), rewriter(counters), counters)
    assert out is None or isinstance(out, bytes)


@pytest.mark.parametrize("mangle", ["short-ip", "total-beyond-bytes", "doff-beyond", "doff-below-5", "not-tcp",
                                    "fragment"])
def test_lying_headers_are_left_alone_and_counted_as_malformed(mangle):
    raw = bytearray(tcp(1000, b"PORT 10,0,0,1,4,1\r\n"))
    if mangle == "short-ip":
        raw = raw[:19]
    elif mangle == "total-beyond-bytes":
        raw[2:4] = (len(raw) + 10).to_bytes(2, "big")
    elif mangle == "doff-beyond":
        raw[32] = 0xF0
    elif mangle == "doff-below-5":
        raw[32] = 0x40
    elif mangle == "not-tcp":
        raw[9] = 17
    else:
        raw[6] = 0x20
    counters = Counter()
    assert rewrite_segment(bytes(raw), rewriter(counters), rewriter(counters), counters) == bytes(raw)
    assert counters["malformed"] == 1 and counters["rewritten"] == 0


@pytest.mark.parametrize("options", [b"\x05\x00", b"\x05\x01", b"\x05\xff", b"\x08", b"\x05\x0a\x00\x00"])
def test_broken_tcp_options_are_left_as_they_are_and_counted(options):
    out_dir, in_dir = rewriter(), rewriter()
    out_dir.feed(999, b"", syn=True)
    out_dir.feed(1000, b"PORT 10,0,0,1,4,1\r\n")  # an edit, so SACK edges would move
    padded = options + b"\x00" * (-len(options) % 4)
    raw = bytearray(tcp(5000, b"", flags="A", ack=1000))
    raw[32] = (5 + len(padded) // 4) << 4
    raw[2:4] = (len(raw) + len(padded)).to_bytes(2, "big")
    raw = raw[:40] + padded
    counters = Counter()
    out = rewrite_segment(bytes(raw), in_dir, out_dir, counters)
    assert out is not None and out[40:] == padded


@pytest.mark.parametrize("line", [
    b"PORT 10,0,0,1,999,1\r\n", b"PORT 10,0,0,1,0,0\r\n", b"PORT 10,0,0,1,4\r\n", b"PORT 10,0,0,1,4,1,7\r\n",
    b"PORT  x\r\n", b"EPRT |2|::1|4000|\r\n", b"EPRT |1|10.0.0.1|70000|\r\n", b"EPRT |1|10.0.0.1|4000\r\n",
    b"EPRT 1110.0.0.11400011\r\n", b"EPRT |1|10.0.0.1|0|\r\n", b"EPRT |1|10.0.0.256|4000|\r\n",
])
def test_malformed_data_commands_are_left_alone_and_counted(line):
    counters = Counter()
    assert data_rewriter(PRIVATE, GLOBAL, port_for, counters)(line) is None
    assert counters["ftp:malformed-command"] == 1


@pytest.mark.parametrize("line", [b"PORT 10,0,0,2,4,1\r\n", b"EPRT |1|203.0.113.1|4000|\r\n",
                                  b"PORT 110,0,0,1,4,1\r\n"])
def test_another_address_is_not_rewritten_fxp_or_already_global(line):
    counters = Counter()
    assert data_rewriter(PRIVATE, GLOBAL, port_for, counters)(line) is None
    assert counters["ftp:not-our-address"] == 1


def test_no_global_port_leaves_the_command_alone_and_counts_it():
    counters = Counter()
    assert data_rewriter(PRIVATE, GLOBAL, lambda _p: None, counters)(b"PORT 10,0,0,1,4,1\r\n") is None
    assert counters["ftp:no-global-port"] == 1


def test_an_endless_line_is_never_held_past_the_limit_and_never_rewritten():
    counters = Counter()
    side = LineRewriter(data_rewriter(PRIVATE, GLOBAL, port_for, counters), might_be_data_command,
                        max_line=64, counters=counters)
    side.feed(0, b"", syn=True)
    sent = bytearray()
    seq = 1
    for chunk in (b"PORT 10,0,0,1," + b"1" * 40, b"2" * 40, b",4,1\r\n", b"PORT 10,0,0,1,4,1\r\n"):
        new_seq, out = side.feed(seq, chunk)
        assert new_seq == 1 + len(sent)  # nothing lost, nothing doubled
        sent += out
        seq += len(chunk)
    assert bytes(sent).startswith(b"PORT 10,0,0,1," + b"1" * 40 + b"2" * 40 + b",4,1\r\n")  # left alone
    assert bytes(sent).endswith(b"PORT 203,0,113,1,78,33\r\n")  # the next line is a line start again
    assert counters["line-too-long"] == 1 and counters["rewritten"] == 1


@settings(max_examples=200, deadline=None)
@given(acks=st.lists(st.integers(0, SEQ_MOD - 1), max_size=20), syn=st.booleans())
def test_hostile_acks_and_syns_from_the_server_never_corrupt_what_the_client_sends(acks, syn):
    out_dir, in_dir = rewriter(), rewriter()
    out_dir.feed(999, b"", syn=True)
    first = out_dir.feed(1000, b"PORT 10,0,0,1,4,1\r\n")
    for ack in acks:
        rewrite_segment(tcp(ack, b"200 ok\r\n", ack=ack, src=SERVER), in_dir, out_dir)
    if syn:
        in_dir.feed(acks[0] if acks else 0, b"", syn=True)  # the server's SYN touches only its own direction
        out_dir.feed(999, b"", syn=True)  # the client's SYN again (a retransmission): the edits kept
    assert out_dir.feed(1000, b"PORT 10,0,0,1,4,1\r\n") == first  # a retransmission: the same bytes again
    again = out_dir.feed(1019, b"RETR x\r\n")
    assert again == (1000 + len(first[1]), b"RETR x\r\n")


def test_a_new_connection_on_the_same_ports_starts_without_the_old_edits():
    side = rewriter()
    side.feed(999, b"", syn=True)
    side.feed(1000, b"PORT 10,0,0,1,4,1\r\n")
    assert side.ack_back(1000 + 24) == 1019
    side.feed(50_000, b"", syn=True)  # a new ISN: a new connection from the same port
    assert side.feed(50_001, b"USER x\r\n") == (50_001, b"USER x\r\n")
    assert side.ack_back(50_009) == 50_009 and side.counters["new-connection"] == 1


def test_a_segment_beyond_a_gap_is_dropped_and_the_stream_resumes_when_the_gap_is_filled():
    side = rewriter()
    side.feed(99, b"", syn=True)
    assert side.feed(120, b"PORT 10,0,0,1,4,1\r\n") is None
    assert side.counters["out-of-order-dropped"] == 1
    assert side.feed(100, b"USER anonymous\r\n" + b"PASS x\r\n"[:5])[1] == b"USER anonymous\r\nPASS "
    assert side.feed(100 + 21, b"x\r\nPORT 10,0,0,1,4,1\r\n")[1] == b"x\r\nPORT 203,0,113,1,78,33\r\n"


@pytest.mark.parametrize("rewrites", [True, False])
def test_the_acks_after_a_fin_pass_and_keep_their_shift(rewrites):
    """The FIN takes a sequence number: the client's last ACK (seq = FIN + 1) is no segment beyond a gap."""
    side = rewriter() if rewrites else LineRewriter(counters=Counter())
    side.feed(99, b"", syn=True)
    shift = 5 if rewrites else 0
    assert side.feed(100, b"PORT 10,0,0,1,4,1\r\n")[0] == 100
    assert side.feed(119, b"QUIT\r\n", fin=True) == (119 + shift, b"QUIT\r\n")
    assert side.feed(126, b"") == (126 + shift, b"")  # the ACK of the server's FIN
    assert side.feed(119, b"QUIT\r\n", fin=True) == (119 + shift, b"QUIT\r\n")  # the FIN again
    assert side.feed(126, b"") == (126 + shift, b"") and not side.counters["out-of-order-dropped"]


def test_a_direction_with_nothing_to_rewrite_passes_everything_even_beyond_a_gap():
    """The server's direction of the client's ALG: a lost reply must not stall the segments after it."""
    side = LineRewriter(counters=Counter())
    side.feed(99, b"", syn=True)
    assert side.feed(150, b"226 Transfer complete.\r\n") == (150, b"226 Transfer complete.\r\n")
    assert side.feed(100, b"150 Opening data connection.\r\n") == (100, b"150 Opening data connection.\r\n")
    assert not side.counters


def test_a_stream_joined_in_the_middle_is_not_rewritten_before_its_first_line_end():
    side = rewriter()
    assert side.feed(5000, b",0,0,1,4,1\r\n")[1] == b",0,0,1,4,1\r\n"  # maybe the tail of a PORT: unknown
    assert side.feed(5012, b"PORT 10,0,0,1,4,1\r\n")[1] == b"PORT 203,0,113,1,78,33\r\n"
    assert side.counters["joined-mid-stream"] == 1


# ---------------------------------------------------------------- parsing and formatting


@pytest.mark.parametrize(("line", "rewritten"), [
    (b"PORT 10,0,0,1,156,64\r\n", b"PORT 203,0,113,1,78,32\r\n"),
    (b"port 10,0,0,1,156,64\n", b"port 203,0,113,1,78,32\n"),
    (b"EPRT |1|10.0.0.1|40000|\r\n", b"EPRT |1|203.0.113.1|20000|\r\n"),
    (b"eprt !1!10.0.0.1!40001!\r\n", b"eprt !1!203.0.113.1!20001!\r\n"),
])
def test_port_and_eprt_naming_the_private_address_get_the_global_one_rfc_959_rfc_2428(line, rewritten):
    counters = Counter()
    assert data_rewriter(PRIVATE, GLOBAL, port_for, counters)(line) == rewritten
    assert parse_data_command(rewritten).ip == GLOBAL


def test_other_commands_are_not_data_commands():
    for line in (b"RETR PORT 10,0,0,1,4,1\r\n", b"PASV\r\n", b"EPSV\r\n", b"USER port\r\n"):
        assert data_rewriter(PRIVATE, GLOBAL, port_for, Counter())(line) is None
    assert might_be_data_command(b"PO") and might_be_data_command(b"eprt |1") and not might_be_data_command(b"RE")


# ---------------------------------------------------------------- sequence arithmetic at 2^32


@settings(max_examples=300, deadline=None)
@given(seq=st.integers(0, SEQ_MOD - 1), delta=st.integers(-(1 << 30), 1 << 30))
def test_seq_arithmetic_wraps_at_2_to_the_32_rfc_9293_3_4(seq, delta):
    moved = seq_add(seq, delta)
    assert 0 <= moved < SEQ_MOD and seq_diff(moved, seq) == delta
    assert unwrap(moved, seq) == seq + delta and unwrap(moved, seq + SEQ_MOD) == seq + SEQ_MOD + delta


@settings(max_examples=200, deadline=None)
@given(lengths=st.lists(st.tuples(st.integers(0, 50), st.integers(1, 30), st.integers(1, 40)), max_size=8))
def test_seq_map_goes_back_exactly_outside_edits_and_never_past_an_edit_inside_one(lengths):
    """Replacements are never empty (a rewritten line keeps its line end), so every boundary maps back."""
    seqmap, pos, boundaries = SeqMap(), 0, [0]
    for gap, old_len, new_len in lengths:
        pos += gap
        boundaries.append(pos)
        seqmap.add(pos, pos + old_len, b"x" * new_len)
        pos += old_len
        boundaries.append(pos)
    for b in boundaries + [pos + 7]:
        if not any(e.start < b < e.end for e in seqmap.edits):
            assert seqmap.to_original(seqmap.to_new(b)) == b
    for e in seqmap.edits:
        inside = e.new_start + len(e.new) // 2
        if e.new_start < inside < e.new_start + len(e.new):
            assert seqmap.to_original(inside) == e.start  # a partial ACK acknowledges none of the edit


# ---------------------------------------------------------------- the stream properties


commands = st.lists(st.one_of(
    st.builds(lambda p: f"PORT 10,0,0,1,{p >> 8},{p & 255}\r\n".encode(), st.integers(1, 65535)),
    st.builds(lambda p: f"EPRT |1|10.0.0.1|{p}|\r\n".encode(), st.integers(1, 65535)),
    st.sampled_from([b"USER anonymous\r\n", b"PASS guest@\r\n", b"TYPE I\r\n", b"PASV\r\n", b"RETR f.bin\r\n",
                     b"PORT 10,0,0,2,1,1\r\n", b"PORT 10,0,0,1,999,1\r\n", b"EPRT |2|::1|5|\r\n", b"PO\r\n",
                     b"NOOP\n", b"STOR PORT\r\n"])), min_size=1, max_size=12).map(b"".join)


def _segments(stream: bytes, cuts: list[int]) -> list[tuple[int, bytes]]:
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    return [(a, stream[a:b]) for a, b in zip(points, points[1:], strict=False) if b > a]


def _deliver(received: dict[int, int], new_seq: int, out: bytes, isn: int) -> None:
    """The receiver's byte array: every byte at its (unwrapped) position, each position written once or equally."""
    base = seq_diff(new_seq, seq_add(isn, 1))
    for i, byte in enumerate(out):
        assert received.setdefault(base + i, byte) == byte, "a retransmission changed a byte already received"


@settings(max_examples=300, deadline=None)
@given(stream=commands, cuts=st.lists(st.integers(0, 10_000), max_size=10),
       isn=st.sampled_from([0, SEQ_MOD - 7, SEQ_MOD - 300, 123456]),
       resend=st.lists(st.integers(0, 100), max_size=4))
def test_a_command_stream_split_anywhere_and_resent_reaches_the_server_as_the_whole_stream_rewritten(
        stream, cuts, isn, resend):
    side, received = rewriter(), {}
    side.feed(isn, b"", syn=True)
    segments = _segments(stream, cuts)
    for index, (offset, chunk) in enumerate(segments):
        new_seq, out = side.feed(seq_add(isn, 1 + offset), chunk, fin=index == len(segments) - 1)
        _deliver(received, new_seq, out, isn)
        for r in resend:  # retransmissions of anything sent so far, in between
            old_offset, old_chunk = segments[r % (index + 1)]
            _deliver(received, *side.feed(seq_add(isn, 1 + old_offset), old_chunk), isn)
    expected = full_rewrite(stream)
    assert bytes(received[i] for i in range(len(received))) == expected
    assert sorted(received) == list(range(len(expected)))
    # the server's ACK of everything maps back to the client's end of stream, across the wrap
    assert side.ack_back(seq_add(isn, 1 + len(expected))) == seq_add(isn, 1 + len(stream))


# ---------------------------------------------------------------- whole packets: checksums, ACK, SACK


@pytest.mark.parametrize("isn", [1000, SEQ_MOD - 5])
def test_packets_keep_a_checksum_valid_over_their_original_pseudo_header_and_acks_and_sacks_map_back(isn):
    """The client's packet has its private source in the header but a checksum over the global one (812);
    the rewrite must keep exactly that. The server's ACK and SACK edges, counting the rewritten bytes, map back."""
    out_dir, in_dir = rewriter(), rewriter()
    rewrite_segment(tcp(isn, flags="S", pseudo_src=GLOBAL), out_dir, in_dir)
    command = b"PORT 10,0,0,1,156,64\r\n"
    sent = rewrite_segment(tcp(seq_add(isn, 1), command, ack=77, pseudo_src=GLOBAL), out_dir, in_dir)
    assert IP(sent)[TCP].load == b"PORT 203,0,113,1,78,32\r\n" and checksum_over(sent, GLOBAL)
    delta = len(b"PORT 203,0,113,1,78,32\r\n") - len(command)
    nxt = rewrite_segment(tcp(seq_add(isn, 1 + len(command)), b"LIST\r\n", ack=77, pseudo_src=GLOBAL),
                          out_dir, in_dir)
    assert IP(nxt)[TCP].seq == seq_add(isn, 1 + len(command) + delta) and checksum_over(nxt, GLOBAL)
    r_end = seq_add(isn, 1 + len(command) + delta + 6)
    sack = ("SAck", (seq_add(isn, 1 + len(command) + delta), r_end))
    back = rewrite_segment(tcp(77, b"200 ok\r\n", ack=r_end, src=SERVER, options=[("NOP", None), ("NOP", None),
                                                                                 sack]), in_dir, out_dir)
    pkt = IP(back)
    assert pkt[TCP].ack == seq_add(isn, 1 + len(command) + 6)
    assert dict(pkt[TCP].options)["SAck"] == (seq_add(isn, 1 + len(command)), seq_add(isn, 1 + len(command) + 6))
    assert checksum_over(back, SERVER)


def test_an_unchanged_packet_is_returned_as_it_is():
    out_dir, in_dir = rewriter(), rewriter()
    syn = tcp(5, flags="S")
    assert rewrite_segment(syn, out_dir, in_dir) is syn
    data = tcp(6, b"USER anonymous\r\n", ack=9)
    assert rewrite_segment(data, out_dir, in_dir) is data


def test_a_reset_answering_the_servers_stale_ack_keeps_its_sequence_number():
    """RFC 9293 3.10.7.3: a SYN-SENT client answers an unacceptable ACK with <SEQ=SEG.ACK><CTL=RST>. That ACK is
    a server's challenge from the old connection on the same global port (the previous agent's, in TIME-WAIT: its
    PAWS refuses our SYN); only a RST carrying exactly that number frees the port (RFC 5961 3.2). Seen live
    (FTP in the AH tunnel cell right after the ESP one): the ALG moved the RST's SEQ to our SYN+1, the server kept
    the old connection and answered every SYN retry with the same ACK until curl's connect timed out."""
    counters: Counter = Counter()
    out_dir, in_dir = rewriter(counters), LineRewriter(counters=counters)
    isn, stale = 1021454947, 2271409802
    assert rewrite_segment(tcp(isn, flags="S"), out_dir, in_dir) == tcp(isn, flags="S")
    reset = tcp(stale, flags="R")
    assert IP(rewrite_segment(reset, out_dir, in_dir))[TCP].seq == stale
    assert counters["reset-outside-stream"] == 1
