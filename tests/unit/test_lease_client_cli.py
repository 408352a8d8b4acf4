"""``natlab lease ...`` (client_agent.lease_cli) against a fake NAT on loopback UDP: no root, no testbed."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading

import pytest

from client_agent import lease_cli
from netwire import pcp
from netwire.pcp import Opcode, Result

SRV = "203.0.113.100"


class LoopbackNat:
    """A UDP lease server on 127.0.0.1 that answers like the NAT: enough for the CLI's round trips."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.entries: dict[bytes, pcp.LeaseInfo] = {}
        self.requests: list[pcp.Request] = []
        self.refuse: Result | None = None
        self.silent = False
        self.epoch = 1000
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, peer = self.sock.recvfrom(2048)
            except TimeoutError:
                continue
            if not self.silent:
                self.sock.sendto(self._answer(data), peer)

    def _answer(self, data: bytes) -> bytes:
        try:
            request = pcp.decode_request(data)
        except pcp.PcpError as exc:
            return pcp.error_response(data, exc.result, self.epoch)
        self.requests.append(request)
        info, result = request.info, self.refuse or Result.SUCCESS
        if isinstance(info, pcp.GpnDefinition) and info.underlying == 0 and info.protocol in (1, 6, 17):
            result = Result.HAS_ALG
        if result is not Result.SUCCESS:
            return pcp.encode_response(pcp.Response(request.opcode, result, pcp.error_lifetime(result), self.epoch,
                                                    info))
        lifetime = 600 if request.lifetime == pcp.LIFETIME_UNSPECIFIED else request.lifetime
        if isinstance(info, pcp.LeaseInfo):
            gpn = info.global_gpn or 0x4242
            info = dataclasses.replace(info, global_gpn=gpn, private_gpn=info.private_gpn or gpn,
                                       global_ip=info.global_ip or "203.0.113.1")
        elif isinstance(info, pcp.MapInfo) and request.lifetime:
            info = dataclasses.replace(info, external_port=info.external_port or 40000, external_ip="203.0.113.1")
        elif isinstance(info, pcp.ReadInfo):
            records = tuple(pcp.EntryRecord("CLIENT-ALG", e.protocol, request.client_ip, e.private_gpn, e.global_ip,
                                            e.global_gpn, e.foreign_ip, 600, e.port) for e in self.entries.values()
                            if isinstance(e, pcp.LeaseInfo))
            info = dataclasses.replace(info, entries=records)
        if isinstance(info, pcp.LeaseInfo | pcp.MapInfo):
            if request.lifetime == 0:
                self.entries.pop(info.nonce, None)
                lifetime = 0
            else:
                self.entries[info.nonce] = info
        return pcp.encode_response(pcp.Response(request.opcode, Result.SUCCESS, lifetime, self.epoch, info))


@pytest.fixture
def nat():
    server = LoopbackNat()
    yield server
    server.close()


@pytest.fixture
def run(nat, tmp_path, capsys):
    state = tmp_path / "leases.json"

    def natlab_lease(*argv: str, timeout: str = "5"):
        code = lease_cli.main(["lease", *argv, "--server", f"127.0.0.1:{nat.port}", "--state", str(state),
                               "--timeout", timeout])
        out, err = capsys.readouterr()
        return code, out, err

    natlab_lease.state = state
    return natlab_lease


def test_define_alloc_show_renew_release(run, nat):
    code, out, _ = run("define", "esp")
    assert code == 0 and "definition esp" in out and "32 bits" in out
    code, out, _ = run("alloc", "--protocol", "esp", "--foreign", SRV, "--json")
    assert code == 0
    granted = json.loads(out)
    assert granted["result"] == "SUCCESS" and granted["kind"] == "CLIENT-ALG"
    fig6 = {k: granted[k] for k in ("protocol", "private_ip", "private_gpn", "global_ip", "global_gpn", "foreign_ip")}
    assert fig6 == {"protocol": 50, "private_ip": "127.0.0.1", "private_gpn": 0x4242, "global_ip": "203.0.113.1",
                    "global_gpn": 0x4242, "foreign_ip": SRV}
    assert granted["lifetime"] == 600 and granted["expires"]
    lease_id = granted["id"]
    state = json.loads(run.state.read_text())
    assert {item["id"] for item in state["leases"]} >= {lease_id} and state["epoch"]["value"] == 1000

    code, out, _ = run("show")
    assert code == 0 and lease_id[:8] in out and "0x4242" in out and "entries the NAT holds" in out
    assert nat.requests[-1].opcode is Opcode.READ and nat.requests[-1].info.nonce == bytes.fromhex(lease_id)

    code, out, _ = run("renew", lease_id[:6])
    renewal = nat.requests[-1]
    assert code == 0 and renewal.info.nonce == bytes.fromhex(lease_id) and renewal.info.global_gpn == 0x4242

    code, out, _ = run("release", lease_id[:6])
    assert code == 0 and "released" in out and "0x4242" in out and nat.requests[-1].lifetime == 0
    assert lease_id not in run.state.read_text() and nat.entries == {}


def test_udp_uses_map_and_isakmp_uses_lease_on_port_500(run, nat):
    code, out, _ = run("alloc", "--protocol", "udp", "--private-gpn", "4500")
    assert code == 0 and "natlab lease renew" in out
    assert nat.requests[-1].opcode is Opcode.MAP and nat.requests[-1].info.internal_port == 4500
    code, out, _ = run("release", "--all")
    assert code == 0 and "global 203.0.113.1 40000" in out  # what was leased, not the release's zeros
    code, out, _ = run("alloc", "--protocol", "isakmp", "--foreign", SRV)
    assert code == 0 and "isakmp" in out
    assert (nat.requests[-1].info.protocol, nat.requests[-1].info.port) == (17, 500)


def test_a_refusal_exits_non_zero_with_the_result_name(run, nat):
    code, _, err = run("define", "--protocol", "tcp", "--dst-offset", "16", "--length", "16")
    assert code == lease_cli.EXIT_REFUSED and "HAS_ALG" in err
    nat.refuse = Result.GPN_IN_USE
    code, out, _ = run("alloc", "--protocol", "esp", "--global-gpn", "0x1000", "--json")
    assert code == lease_cli.EXIT_REFUSED and json.loads(out)["result"] == "GPN_IN_USE"


def test_no_answer_ends_cleanly_after_the_timeout(run, nat):
    nat.silent = True
    code, _, err = run("alloc", "--protocol", "esp", timeout="0.3")
    assert code == lease_cli.EXIT_NO_ANSWER and "no answer" in err


def test_release_all_and_renew_all(run, nat):
    for _ in range(3):
        assert run("alloc", "--protocol", "ah")[0] == 0
    assert run("renew", "--all")[0] == 0 and len(nat.requests) == 6
    assert run("release", "--all")[0] == 0 and nat.entries == {}
    assert json.loads(run.state.read_text())["leases"] == []


def test_an_unknown_id_is_a_clear_error(run):
    code, _, err = run("renew", "abcd")
    assert code == lease_cli.EXIT_STATE and "'abcd' names no lease" in err


@pytest.mark.parametrize("argv, complaint", [
    (["alloc", "--protocol", "foo"], "argument --protocol: 'foo' is not esp, ah, isakmp"),
    (["alloc", "--protocol", "esp", "--private-gpn", "0xZZ"], "argument --private-gpn: '0xZZ' is not an integer"),
    (["alloc", "--protocol", "esp", "--foreign", "203.0.113"], "argument --foreign: '203.0.113' is not an IPv4"),
    (["alloc", "--protocol", "esp", "--lifetime", "0"], "argument --lifetime: '0' is not a lifetime"),
    (["define", "--range", "9-3"], "argument --range: '9-3' is empty"),
    (["define", "--length", "65"], "argument --length: '65' is not a length in bits in 1..64"),
    (["renew"], "one of the arguments id --all is required"),
])
def test_bad_input_names_the_option_and_the_value(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exit_:
        lease_cli.main(["lease", *argv])
    assert exit_.value.code == 2 and complaint in capsys.readouterr().err


@pytest.mark.parametrize("argv, complaint", [
    (["alloc", "--protocol", "udp"], "--private-gpn (the internal port) is required for udp and tcp"),
    (["alloc", "--protocol", "tcp", "--private-gpn", "80", "--foreign", SRV], "--foreign-port is required"),
    (["define", "--protocol", "esp"], "at least --dst-offset, --length"),
    (["define", "esp", "--unspecified", "0x100000000"], "invalid definition: unspecified"),
])
def test_inconsistent_input_is_refused_before_sending(argv, complaint, run, nat):
    code, _, err = run(*argv)
    assert code == lease_cli.EXIT_USAGE and complaint in err and nat.requests == []


def test_help_text_lists_the_actions(capsys):
    with pytest.raises(SystemExit):
        lease_cli.main(["lease", "--help"])
    out = capsys.readouterr().out
    assert all(action in out for action in ("define", "alloc", "renew", "release", "show")) and "RFC 6887" in out


def test_an_unwritable_state_file_is_a_clear_error(nat, tmp_path, capsys):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(SystemExit) as exit_:
        lease_cli.main(["lease", "alloc", "--protocol", "esp", "--server", f"127.0.0.1:{nat.port}",
                        "--state", str(blocker / "leases.json")])
    assert "state file" in str(exit_.value) and "--state FILE" in str(exit_.value)
