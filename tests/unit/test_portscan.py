"""Reading nmap's XML report (conformance.portscan): the live nmap test trusts these answers."""

import pytest

from conformance.portscan import ScanError, found_open, nmap_argv, read_report, top_udp_ports


def report(ports: str = "", finished: str = '<runstats><finished exit="success"/></runstats>') -> str:
    return f"""<?xml version="1.0"?><nmaprun scanner="nmap">
<host><status state="up"/><address addr="203.0.113.1" addrtype="ipv4"/><address addr="02:4E:41:54:00:02"
 addrtype="mac"/><ports>
<extraports state="filtered" count="65534"><extrareasons reason="no-response" count="65534" proto="tcp"/></extraports>
<extraports state="open|filtered" count="3"><extrareasons reason="no-response" count="3" proto="udp"/></extraports>
{ports}</ports></host>{finished}</nmaprun>"""


def test_a_silent_nat_is_filtered_tcp_and_open_filtered_udp_so_nothing_is_found_open():
    (host,) = read_report(report('<port protocol="tcp" portid="22"><state state="filtered" reason="no-response"/>'
                                 "</port>"))
    assert host.address == "203.0.113.1"
    assert host.counted == {"tcp": 65535, "udp": 3}
    assert found_open([host]) == set()


def test_a_syn_ack_is_found_open():
    hosts = read_report(report('<port protocol="tcp" portid="8080"><state state="open" reason="syn-ack"/></port>'))
    assert found_open(hosts) == {("203.0.113.1", "tcp", 8080)}


def test_open_filtered_udp_is_not_counted_as_open():
    hosts = read_report(report('<port protocol="udp" portid="500"><state state="open|filtered" '
                               'reason="no-response"/></port>'))
    assert found_open(hosts) == set()


@pytest.mark.parametrize("text", [report(finished=""), report(finished='<runstats><finished exit="error"/>'
                                                                        "</runstats>"), "<nmaprun", "<other/>"])
def test_an_unfinished_or_foreign_report_is_refused(text):
    with pytest.raises(ScanError):
        read_report(text)


def test_top_udp_ports_follow_nmap_services_frequencies():
    services = ("# comment\nsnmp\t161/udp\t0.433\nntp\t123/udp\t0.330\nhttp\t80/tcp\t0.484\n"
                "domain\t53/udp\t0.213\nrare\t9/udp\t0.000\n")
    assert top_udp_ports(services, 3) == [161, 123, 53]


def test_the_command_scans_every_tcp_port_and_the_named_udp_ports_once():
    argv = nmap_argv(["203.0.113.1", "203.0.113.2"], (1, 65535), [5351, 500, 4500, 500], "/tmp/x.xml")
    assert argv[argv.index("-p") + 1] == "T:1-65535,U:500,4500,5351"
    assert argv[-2:] == ["203.0.113.1", "203.0.113.2"] and "-oX" in argv
