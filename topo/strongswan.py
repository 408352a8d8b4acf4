"""strongSwan's charon as an IKEv2 peer nobody here wrote: its configuration files and command lines.

Debian 12's charon 5.9.8 with ``kernel-libipsec`` (no kernel ESP here), one
instance per host, each in its own mount namespace so that its compiled-in
``/run`` (pid file) is private (ENVIRONMENT.md, "strongSwan in a Mininet
host"). Everything lives in one directory: ``strongswan.conf``,
``swanctl.conf``, ``run/``, the vici socket and ``charon.log`` (``chd = 4``
logs the CHILD_SA keys, ``ike = 2`` the IKE_SA's progress). The caller starts
:meth:`Charon.command` in the host (e.g. ``host.popen``) and loads the
connection with :meth:`Charon.swanctl`. :func:`charon_children` reads the CHILD_SA keys
charon logged and :func:`charon_esp_sa` turns them into Wireshark's ``esp_sa``, so tshark
decrypts a capture with the keys strongSwan itself used (natlab's agent writes its own).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from client_agent.ipsec.keyfile import esp_sa_file
from client_agent.ipsec.sa import Mode, Protocol, SecurityAssociation

__pure__ = True

CHARON = "/usr/lib/ipsec/charon"
VICI_DIR = Path("/tmp")  # where the vici sockets go (see Charon.vici_path)
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
    ah: str = ""  # AH proposals instead of ESP's (libipsec refuses AH: the comparison shows it failing)
    local_ts: tuple[str, ...] = ()
    remote_ts: tuple[str, ...] = ()
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Charon:
    directory: Path

    @property
    def vici_path(self) -> Path:
        """The vici socket: a short path of its own, named after ``directory``, since a unix socket's path
        must fit in 108 bytes and a run folder's may not (the demo's evidence folders do not)."""
        return VICI_DIR / f"natlab-charon-{hashlib.sha256(str(self.directory).encode()).hexdigest()[:16]}.vici"

    @property
    def vici(self) -> str:
        return f"unix://{self.vici_path}"

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
        "    children {", "      natlab {", f"        mode = {p.mode}", f"        ah_proposals = {p.ah}" if p.ah else f"        esp_proposals = {p.esp}",
        *([f"        local_ts = {','.join(p.local_ts)}"] if p.local_ts else []),
        *([f"        remote_ts = {','.join(p.remote_ts)}"] if p.remote_ts else []),
        "      }", "    }", "  }", "}",
        "secrets {", "  ike-natlab {", f"    id-1 = {p.local_id}", f"    id-2 = {p.remote_id}",
        f'    secret = "{p.psk}"', "  }", "}", "",
    ]
    return "\n".join(lines)


_KEY = re.compile(r"(encryption|integrity) (initiator|responder) key => (\d+) bytes")
_DUMP = re.compile(r"\[CHD\]\s+\d+: ((?:[0-9A-F]{2} )*[0-9A-F]{2})")
_PROPOSAL = re.compile(r"selected proposal: ESP:(\S+)")
_ESTABLISHED = re.compile(r"CHILD_SA \S+\{\d+\} established with SPIs ([0-9a-f]{8})_i ([0-9a-f]{8})_o")


@dataclass(frozen=True)
class CharonChild:
    """One ESP CHILD_SA as charon logged it (``chd = 4``): SPIs, transforms, keys per direction."""

    spi_in: int
    spi_out: int
    encryption: str  # natlab's (IANA) names
    integrity: str
    keys_in: tuple[bytes, bytes]  # (encryption, integrity), "" when the transform has none
    keys_out: tuple[bytes, bytes]

    def security_associations(self) -> list[SecurityAssociation]:
        """Inbound and outbound SA parameters for a key file: no addresses (``*``: tshark matches the SPI), and
        the mode left at transport, which the key file does not carry."""
        return [SecurityAssociation(spi=spi, protocol=Protocol.ESP, mode=Mode.TRANSPORT, encryption=self.encryption,
                                    enc_key=keys[0], integrity=self.integrity, auth_key=keys[1])
                for spi, keys in ((self.spi_in, self.keys_in), (self.spi_out, self.keys_out))]


def natlab_names(proposal: str) -> tuple[str, str]:
    """charon's ``AES_GCM_16_128/NO_EXT_SEQ`` or ``AES_CBC_128/HMAC_SHA2_256_128/NO_EXT_SEQ`` as natlab's
    (IANA) encryption and integrity names; the key size comes from the keys themselves."""
    parts = [p for p in proposal.split("/") if p not in ("NO_EXT_SEQ", "EXT_SEQ")]
    encryption = "ENCR_" + re.sub(r"_(128|192|256)$", "", parts[0])
    integrity = "AUTH_" + parts[1] if len(parts) > 1 else "NONE"
    return encryption, integrity


def _hex_dumps(lines: Iterator[str], length: int) -> bytes:
    """The next ``length`` bytes of strongSwan's %B hex dump (one ``[CHD]   0: AA BB ..`` line per 16)."""
    out = bytearray()
    while len(out) < length:
        match = _DUMP.search(next(lines))
        if match:
            out += bytes.fromhex(match.group(1).replace(" ", ""))
    return bytes(out[:length])


def charon_children(log: str, initiator: bool) -> list[CharonChild]:
    """Every CHILD_SA in charon's log, keyed as RFC 7296 2.17 says: the exchange initiator's outbound keys
    are the "initiator" ones. ``initiator``: charon initiated the exchanges that made them (no rekeys
    by the peer in between)."""
    keys: dict[str, bytes] = {}
    proposal, children = "", []
    lines = iter(log.splitlines())
    for line in lines:
        if (key := _KEY.search(line)) is not None:
            keys[f"{key.group(1)} {key.group(2)}"] = _hex_dumps(lines, int(key.group(3)))
        elif (chosen := _PROPOSAL.search(line)) is not None:
            proposal = chosen.group(1)
        elif (done := _ESTABLISHED.search(line)) is not None:
            children.append(_child(done, proposal, keys, initiator))
    return children


def _child(done: re.Match[str], proposal: str, keys: dict[str, bytes], initiator: bool) -> CharonChild:
    mine, theirs = ("initiator", "responder") if initiator else ("responder", "initiator")
    encryption, integrity = natlab_names(proposal)
    return CharonChild(int(done.group(1), 16), int(done.group(2), 16), encryption, integrity,
                       (keys[f"encryption {theirs}"], keys.get(f"integrity {theirs}", b"")),
                       (keys[f"encryption {mine}"], keys.get(f"integrity {mine}", b"")))


def charon_esp_sa(log: str, initiator: bool) -> str:
    """Wireshark's ``esp_sa`` for every CHILD_SA in charon's log (both directions of each)."""
    return esp_sa_file(sa for child in charon_children(log, initiator) for sa in child.security_associations())
