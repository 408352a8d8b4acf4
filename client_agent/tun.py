"""A TUN device: layer-3 packets between the kernel's routing and this process.

Linux's TUN driver (Documentation/networking/tuntap.rst) gives a file
descriptor on which every ``read`` returns one IP packet the kernel routed into
the device and every ``write`` hands one IP packet to the kernel as if it had
arrived on the device. With ``IFF_NO_PI`` there is no packet-information
prefix: the bytes are the IPv4 packet itself.

TUN has no checksum or segmentation offload unless asked (``TUNSETOFFLOAD``),
so what the agent reads carries finished checksums and is never larger than
the device MTU. With ``vnet_hdr`` (``IFF_VNET_HDR``) every frame starts with a
virtio-net header (:mod:`client_agent.coalesce`): reads get an all-zero one
(no offload asked, so nothing arrives coalesced), and writes may hand the
kernel a TCP super-segment that it takes up its stack as one packet.
"""

from __future__ import annotations

import fcntl
import os
import struct
import subprocess
from pathlib import Path

from client_agent.coalesce import PLAIN, VNET_HDR_LEN

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA  # _IOW('T', 202, int)
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
IFNAMSIZ = 16  # including the terminating NUL
READ_SIZE = 65535  # an IPv4 packet is never longer


class Tun:
    """An open TUN device ``name``: non-blocking reads, one packet per call.

    The device exists while the descriptor is open (it is not persistent), so
    :meth:`close` (or the process ending) removes it with its addresses and routes.
    """

    def __init__(self, name: str, mtu: int, *, vnet_hdr: bool = False, txqueuelen: int | None = None) -> None:
        if not 0 < len(name.encode()) < IFNAMSIZ:
            raise ValueError(f"tun={name!r}: an interface name has 1..{IFNAMSIZ - 1} bytes")
        self.name = name
        self.mtu = mtu
        self.vnet_hdr = vnet_hdr
        if vnet_hdr:
            self.read, self.write = self._read_vnet, self._write_vnet  # type: ignore[method-assign]
        self.fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.ioctl(self.fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)))
            _disable_ipv6(name)
            queue = ["txqueuelen", str(txqueuelen)] if txqueuelen else []
            subprocess.run(["ip", "link", "set", "dev", name, "mtu", str(mtu), *queue, "up"], check=True,
                           capture_output=True)
        except BaseException:
            os.close(self.fd)
            raise

    def fileno(self) -> int:
        return self.fd

    def read(self) -> bytes | None:
        """The next packet the kernel routed into the device, or None if there is none now."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None

    def write(self, packet: bytes | bytearray) -> None:
        """Hand ``packet`` to the kernel as received on this device."""
        os.write(self.fd, packet)

    def write_frame(self, frame: bytes | bytearray) -> None:
        """Hand the kernel a frame that starts with its virtio-net header (``vnet_hdr`` devices only)."""
        os.write(self.fd, frame)

    def _read_vnet(self) -> bytes | None:
        try:
            return os.read(self.fd, READ_SIZE + VNET_HDR_LEN)[VNET_HDR_LEN:]
        except BlockingIOError:
            return None

    def _write_vnet(self, packet: bytes | bytearray) -> None:
        os.write(self.fd, PLAIN + packet)

    def close(self) -> None:
        """Close the descriptor; the kernel deletes the device."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Tun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _disable_ipv6(name: str) -> None:
    """The agent is IPv4-only: keep the kernel's IPv6 router solicitations out of the device."""
    switch = Path("/proc/sys/net/ipv6/conf") / name / "disable_ipv6"
    if switch.exists():
        switch.write_text("1")
