"""``natlab agent --config FILE``: run the IPsec agent of this host (or ``python -m client_agent.agent_cli``).

Runs in the host's network namespace as root, until SIGTERM or SIGINT. The
config format is described in :mod:`client_agent.agent_config`; examples for
both sides of ESP transport, AH transport and ESP tunnel mode are in
``client_agent/examples/``. ``--check`` only validates the file (no root needed).

:class:`AgentProcess` starts the same command in a Mininet host (tests, benchmarks).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from client_agent.agent_config import AgentConfig, ConfigError, load, render

DESCRIPTION = """\
Run this host's IPsec agent (ESP/AH, keyed by hand with [[sa]] tables or by IKEv2 with an
[ike] table) in its network namespace, as root, until SIGTERM or SIGINT. It routes the
config's protected prefixes into a TUN device and protects what the SPD selects; with [nat]
it leases its SPIs, ports and, for IKE, its initiator SPI from the extensible NAT first. On
exit it removes its device, routes and rule and restores rp_filter. In its run directory it
writes esp_sa (and, keyed by IKE, ikev2_decryption_table: Wireshark key files, use the
directory as WIRESHARK_CONFIG_DIR; ah_sa holds AH keys in esp_sa's format) and status.json
(counters, every second and on SIGUSR1).
Config format: client_agent/agent_config.py, [ike]: client_agent/agent_ike.py;
examples: client_agent/examples/ (ike-*.toml keyed by IKE)."""
EXIT_CONFIG = 2
START_TIMEOUT_S = 20.0  # more than [nat] lease_timeout: a lease failure is reported by the agent itself
STOP_TIMEOUT_S = 10.0  # more than a release's wait for its answer (agent_leases.RELEASE_GIVE_UP_S), plus the tidying up


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, type=Path, help="the agent's TOML file")
    p.add_argument("--run-dir", type=Path, help="where esp_sa and status.json go (default: from the config, "
                                                "else /run/natlab/agent-NAME)")
    p.add_argument("--check", action="store_true", help="validate the config, print a summary and exit")
    p.add_argument("--profile", type=Path, help="run the datapath under cProfile and write the stats here")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def add_agent_parser(subparsers) -> None:
    """Register ``natlab agent`` on the ``natlab`` command's subparsers."""
    p = subparsers.add_parser("agent", help="run this host's IPsec agent (TUN + raw sockets; manual keys or IKEv2)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        config = load(args.config)
    except ConfigError as err:
        print(f"natlab agent: {err}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        print(f"{args.config}: agent {config.name}, {config.tun} mtu {config.tun_mtu()}, "
              f"routes {', '.join(config.routes) or 'none'}, {len(config.sas)} SAs, {len(config.policies)} policies"
              + (f"; behind the NAT as {config.nat.global_ip} (lease server {config.nat.server}, "
                 f"compensation {'on' if config.nat.compensate else 'OFF'})" if config.nat else "")
              + (f"; keyed by IKEv2 as {config.ike.role} ({config.ike.local_id}"
                 f"{' -> ' + config.ike.peer if config.ike.peer else ''}, {config.ike.mode}, "
                 f"{'/'.join(config.ike.esp or config.ike.ah)})" if config.ike else ""))
        return 0
    from client_agent.agent import Agent  # needs root from here on

    signal.signal(signal.SIGTERM, _exit)  # until the datapath runs: leave through the cleanup, not around it
    try:
        with Agent(config, args.run_dir) as agent:
            agent.run(profile=args.profile)
    except (OSError, ConfigError) as err:
        logging.getLogger("natlab.agent").error("agent %s: %s", config.name, err)
        return 1
    return 0


def _exit(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


class AgentProcess:
    """``python -m client_agent.agent_cli`` in a Mininet ``host``, with its run directory; a context manager.

    ``config`` is a file, or an :class:`AgentConfig` written as ``agent.toml``
    into ``run_dir``. Entering waits until the agent's ``status.json`` says it
    is running; leaving stops it with SIGTERM (:meth:`stop` returns the exit status).
    """

    def __init__(self, host: Any, config: Path | AgentConfig, run_dir: Path, *extra_args: str) -> None:
        self.host = host
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.config = config if isinstance(config, AgentConfig) else None
        if isinstance(config, AgentConfig):
            self.config_path = self.run_dir / "agent.toml"
            self.config_path.write_text(render(config))
        else:
            self.config_path = Path(config)
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None

    @property
    def log(self) -> Path:
        return self.run_dir / "agent.log"

    @property
    def keyfile(self) -> Path:
        return self.run_dir / "esp_sa"

    def start(self) -> AgentProcess:
        self.launch()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.poll_running():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"agent in {self.host.name} did not start within {START_TIMEOUT_S}s: {self.log_tail()}")

    def launch(self) -> AgentProcess:
        """Start the process and return at once (many agents launched together: ``natlab bench scale``)."""
        argv = [sys.executable, "-m", "client_agent.agent_cli", "--config", str(self.config_path),
                "--run-dir", str(self.run_dir), *self.extra_args]
        (self.run_dir / "status.json").unlink(missing_ok=True)
        with open(self.log, "ab") as log:
            self.proc = self.host.popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT)
        return self

    def poll_running(self) -> bool:
        """Is the launched agent running (its leases granted)? RuntimeError if it exited instead."""
        assert self.proc is not None, "launch the agent first"
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent in {self.host.name} exited with {self.proc.returncode}: {self.log_tail()}")
        return bool(self.status().get("state") == "running")

    def status(self) -> dict[str, Any]:
        """The agent's ``status.json`` ({} before it wrote one)."""
        try:
            return json.loads((self.run_dir / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def refresh(self) -> dict[str, Any]:
        """Ask the agent for fresh counters (SIGUSR1) and return them."""
        before = self.status().get("time", 0)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 2
            while self.status().get("time", 0) == before and time.monotonic() < deadline:
                time.sleep(0.02)
        return self.status()

    def stop(self) -> int | None:
        """SIGTERM, then wait (SIGKILL after :data:`STOP_TIMEOUT_S`); the exit status."""
        if self.proc is None:
            return self.returncode
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.returncode, self.proc = self.proc.returncode, None
        return self.returncode

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> AgentProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="natlab agent", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
