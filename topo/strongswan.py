"""strongSwan's charon as an IKEv2 peer nobody here wrote: its configuration files and command lines.

Debian 12's charon 5.9.8 with ``kernel-libipsec`` (no kernel ESP here), one
instance per host, each in its own mount namespace so that its compiled-in
``/run`` (pid file) is private (ENVIRONMENT.md, "strongSwan in a Mininet
host"). Everything lives in one directory: ``strongswan.conf``,
``swanctl.conf``, ``run/``, the vici socket and ``charon.log`` (``chd = 4``
logs the CHILD_SA keys, ``ike = 2`` the IKE_SA's progress). The caller starts
:meth:`Charon.command` in the host (e.g. ``host.popen``) and loads the
connection with :meth:`Charon.swanctl`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHARON = "/usr/lib/ipsec/charon"
PLUGINS = ("random nonce openssl pem pkcs1 x509 revocation constraints pubkey kdf kernel-libipsec kernel-netlink "
           "socket-default vici updown")


@dataclass(frozen=True)
class Peering:
    """One swanctl connection with a PSK; proposals in strongSwan's own syntax."""

    local_addr: str
    remote_addr: str  # "%any" for a responder
    local_id: str
    remote_id: str
    psk: str
    ike: str = "aes128-sha256-modp2048"
    esp: str = "aes128gcm16"
    mode: str = "tunnel"
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Charon:
    directory: Path

    @property
    def vici(self) -> str:
        return f"unix://{self.directory / 'charon.vici'}"

    @property
    def log(self) -> Path:
        return self.directory / "charon.log"

    def write(self, peering: Peering) -> None:
        """strongswan.conf, swanctl.conf and an empty ``run/`` for the private /run."""
        (self.directory / "run").mkdir(parents=True, exist_ok=True)
        (self.directory / "strongswan.conf").write_text(self.strongswan_conf())
        (self.directory / "swanctl.conf").write_text(swanctl_conf(peering))

    def strongswan_conf(self) -> str:
        """One setting per line (swanctl rejects several on one line; the same style here)."""
        return "\n".join([
            "charon {",
            f"  load = {PLUGINS}",
            "  install_routes = no",
            "  retransmit_tries = 3",
            "  filelog {",
            "    natlab {",
            f"      path = {self.log}",
            "      default = 1",
            "      ike = 2",
            "      cfg = 2",
            "      chd = 4",
            "      knl = 1",
            "      enc = 1",
            "      flush_line = yes",
            "    }",
            "  }",
            "  plugins {",
            "    vici {",
            f"      socket = {self.vici}",
            "    }",
            "  }",
            "}",
            "",
        ])

    def command(self) -> list[str]:
        """charon in its own mount namespace with DIR/run bind-mounted on /run."""
        script = (f"mount --bind {self.directory / 'run'} /run && "
                  f"STRONGSWAN_CONF={self.directory / 'strongswan.conf'} exec {CHARON}")
        return ["unshare", "-m", "--propagation", "private", "sh", "-c", script]

    def swanctl(self, *args: str) -> list[str]:
        return ["swanctl", *args, "--uri", self.vici]

    def load(self) -> list[str]:
        return self.swanctl("--load-all", "--file", str(self.directory / "swanctl.conf"))


def swanctl_conf(p: Peering) -> str:
    """A connection named ``natlab`` with one child ``natlab``, and its PSK."""
    lines = [
        "connections {", "  natlab {", "    version = 2", f"    local_addrs = {p.local_addr}",
        f"    remote_addrs = {p.remote_addr}", f"    proposals = {p.ike}", "    encap = no", "    mobike = no",
        *(f"    {k} = {v}" for k, v in p.options.items()),
        "    local {", "      auth = psk", f"      id = {p.local_id}", "    }",
        "    remote {", "      auth = psk", f"      id = {p.remote_id}", "    }",
        "    children {", "      natlab {", f"        mode = {p.mode}", f"        esp_proposals = {p.esp}",
        *([f"        local_ts = {','.join(p.local_ts)}"] if p.local_ts else []),
        *([f"        remote_ts = {','.join(p.remote_ts)}"] if p.remote_ts else []),
        "      }", "    }", "  }", "}",
        "secrets {", "  ike-natlab {", f"    id-1 = {p.local_id}", f"    id-2 = {p.remote_id}",
        f'    secret = "{p.psk}"', "  }", "}", "",
    ]
    return "\n".join(lines)
