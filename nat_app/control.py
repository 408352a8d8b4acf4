"""The controller's control socket: one JSON request per line, one JSON answer.

A unix socket (root only, mode 0600) rather than TCP: Mininet hosts, which
share the link with strangers in the seed's setting, cannot reach it.
Requests: {"op": "table"}; {"op": "check"} (table invariants); {"op": "bypass", "on": true|false}.
"""

from __future__ import annotations

import json
import socket


class ControlError(RuntimeError):
    pass


def request(path: str, op: str, timeout: float = 5.0, **args) -> dict:
    """Send one request to a running controller and return its answer."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError as exc:
        raise ControlError(f"no controller answering on {path}: {exc} (is `natlab controller` running?)") from None
    answer = json.loads(data or b"{}")
    if "error" in answer:
        raise ControlError(answer["error"])
    return answer
