"""Python's own ftplib as an FTP client on a testbed host: one session, a RETR and/or a STOR, active or passive.

Run in a Mininet host: ``python -m conformance.ftp_client --server IP (--active|--passive) [--get NAME
--to PATH] [--put PATH --as NAME]``. ftplib's active mode sends PORT (EPRT for IPv6 only), naming the
address of its control connection's socket: behind the NAT, the private one. Prints one JSON line with
the replies; exits 1 on any FTP error.
"""

from __future__ import annotations

import argparse
import ftplib
import json
import sys
from pathlib import Path

TIMEOUT_S = 30


def transfer(server: str, active: bool, get: str | None, to: Path | None, put: Path | None,
             put_as: str | None) -> dict[str, bool | str]:
    """RETR ``get`` into ``to`` and/or STOR ``put`` as ``upload/put_as``; ftplib's replies for the record."""
    replies: dict[str, bool | str] = {"active": active}
    with ftplib.FTP(server, timeout=TIMEOUT_S) as ftp:
        ftp.login()
        ftp.set_pasv(not active)
        if get and to:
            with to.open("wb") as out:
                replies["retr"] = ftp.retrbinary(f"RETR {get}", out.write)
        if put and put_as:
            with put.open("rb") as data:
                replies["stor"] = ftp.storbinary(f"STOR upload/{put_as}", data)
    return replies


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--active", action="store_true")
    mode.add_argument("--passive", action="store_true")
    parser.add_argument("--get")
    parser.add_argument("--to", type=Path)
    parser.add_argument("--put", type=Path)
    parser.add_argument("--as", dest="put_as")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(transfer(args.server, args.active, args.get, args.to, args.put, args.put_as)))
    except (ftplib.Error, OSError) as err:
        print(json.dumps({"error": f"{type(err).__name__}: {err}"}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
