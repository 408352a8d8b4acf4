"""The framework's own ceiling, for ``natlab bench leases``: a minimal os-ken app on r1, packet-in -> PacketOut.

Issue 16 asks how close the NAT's slow path (the controller demultiplexing ESP by SPI when several
clients share a global IP) comes to what os-ken and OVS allow at all. This app is that bound: when r1
connects it deletes r1's flows and installs one flow sending ESP from the outside port to the controller
(the NAT's slow-path punt flow, without its SPI-space match); each packet-in goes back out of the inside
port as a PacketOut with the rewrite the NAT's slow path makes (destination IP and MAC of one fixed
client), packed by the same ``ofwire`` as the NAT's. No table, no parsing, no decision, no state.
Other switches (s1) are left alone. It writes ``ready`` into ``--ready`` once r1's flows are set.

Run as ``python -m nat_app.ceiling_app --listen-port P --client-ip IP --client-mac MAC --ready FILE``
in place of ``natlab controller`` (r1 reconnects to whichever listens on its controller port).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from os_ken.base import app_manager
from os_ken.controller import ofp_event
from os_ken.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from os_ken.ofproto import ofproto_v1_3

from nat_app import ofwire
from nat_app.messages import Output, PacketOut, SetField
from netwire.ethernet import ETH_TYPE_IPV4
from netwire.ipv4 import IPPROTO_ESP
from netwire.plan import R1_DPID, R1_INSIDE_MAC, R1_INSIDE_PORT, R1_OUTSIDE_PORT

TARGET: tuple[str, str] = ("", "")  # (client IP, client MAC), set by main()
READY: Path | None = None


class CeilingApp(app_manager.OSKenApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def _features(self, ev) -> None:
        dp = ev.msg.datapath
        if ev.msg.datapath_id != R1_DPID:  # dp.id is os-ken's handler's to set, in another thread (nat_app/app.py)
            return
        parser, ofp = dp.ofproto_parser, dp.ofproto
        dp.send_msg(parser.OFPFlowMod(dp, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL,
                                      out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY))
        match = parser.OFPMatch(in_port=R1_OUTSIDE_PORT, eth_type=ETH_TYPE_IPV4, ip_proto=IPPROTO_ESP)
        punt = [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]
        dp.send_msg(parser.OFPFlowMod(dp, priority=10, match=match,
                                      instructions=[parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, punt)]))
        dp.send_msg(parser.OFPBarrierRequest(dp))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def _barrier(self, ev) -> None:
        if ev.msg.datapath.id == R1_DPID and READY is not None:
            READY.write_text("ready\n")

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def _packet_in(self, ev) -> None:
        msg = ev.msg
        dp = msg.datapath
        if dp.id != R1_DPID:
            return
        ip, mac = TARGET
        out = PacketOut(bytes(msg.data), (SetField("ipv4_dst", ip), SetField("eth_src", R1_INSIDE_MAC),
                                          SetField("eth_dst", mac), Output(R1_INSIDE_PORT)), R1_OUTSIDE_PORT)
        dp.send(ofwire.encode(out, 0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nat_app.ceiling_app", description=__doc__.splitlines()[0])
    p.add_argument("--listen-port", type=int, required=True)
    p.add_argument("--client-ip", required=True)
    p.add_argument("--client-mac", required=True)
    p.add_argument("--ready", type=Path, required=True, help="written once r1's flows are set")
    args = p.parse_args(argv)
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager

    import nat_app.ceiling_app as app  # the module os-ken loads (``python -m`` runs this file as __main__)

    app.TARGET, app.READY = (args.client_ip, args.client_mac), args.ready

    cfg.CONF(args=["--ofp-listen-host", "127.0.0.1", "--ofp-tcp-listen-port", str(args.listen_port)],
             project="os_ken")
    AppManager.run_apps(["nat_app.ceiling_app"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
