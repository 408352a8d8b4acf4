"""pyftpdlib (an FTP server nobody here wrote) on a testbed host: anonymous read, an ``upload`` folder to write.

Run in a Mininet host: ``python -m conformance.ftp_server --bind IP --root DIR --log FILE``.
Its log is evidence: besides each transfer ("RETR ... completed=1 bytes=..."),
every PORT/EPRT is logged with the address the server connected the data
connection to, and every PASV/EPSV, and a refused PORT/EPRT ("501 Rejected
data connection to foreign address") is logged as a warning. pyftpdlib keeps
RFC 2577's checks on: a PORT/EPRT address other than the control
connection's peer is refused, so a client ALG that did not run is seen. The
server stops by itself after ``--seconds``.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import ThreadedFTPServer

from netwire.ftp import FTP_CONTROL_PORT

UPLOAD = "upload"
ANONYMOUS = "anonymous"


class LoggingHandler(FTPHandler):
    """pyftpdlib's handler, logging the data-connection commands too (INFO, not only at DEBUG)."""

    log_cmds_list = [*FTPHandler.log_cmds_list, "PORT", "EPRT", "PASV", "EPSV"]


def server(bind: str, root: Path, port: int = FTP_CONTROL_PORT) -> ThreadedFTPServer:
    """Anonymous may list and read ``root`` and also write into ``root/upload``.

    One thread (and I/O loop) per session: with the single-loop server, an active-mode upload now and then
    stopped being read under three concurrent clients (the server's receive window stayed 0 until the
    client gave up, its control connection clean), which is the server's business, not the NAT's.
    """
    (root / UPLOAD).mkdir(parents=True, exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(root), perm="elr")
    authorizer.override_perm(ANONYMOUS, str(root / UPLOAD), perm="elrw", recursive=True)
    handler = type("Handler", (LoggingHandler,), {"authorizer": authorizer, "banner": "natlab pyftpdlib"})
    return ThreadedFTPServer((bind, port), handler)


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bind", required=True)
    parser.add_argument("--port", type=int, default=FTP_CONTROL_PORT)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--log", type=Path, required=True)
    parser.add_argument("--seconds", type=int, default=600)
    args = parser.parse_args(argv)
    logging.basicConfig(filename=args.log, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.alarm(args.seconds)  # bounded: SIGALRM ends it even if nobody stops it
    ftpd = server(args.bind, args.root, args.port)
    try:
        ftpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        ftpd.close_all()


if __name__ == "__main__":
    main()
