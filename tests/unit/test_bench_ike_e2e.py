"""``natlab bench ike --e2e``'s arithmetic and its first-reply probe (loopback, no root)."""

from __future__ import annotations

import socket
import threading
import time

from conformance.bench_ike_e2e import _derived, _median, ike_setup
from conformance.probes import first_reply


def test_ike_cost_is_the_difference_of_the_medians_and_setups_per_second_one_over_the_setup() -> None:
    medians = {"ike": {"running": 0.8, "child": 0.81, "first": 1.1, "ike_setup": 0.025},
               "manual": {"running": 0.8, "child": None, "first": 0.85, "ike_setup": None}}
    assert _derived(medians) == {"ike_cost_s": 0.25, "e2e_setups_per_s": 40.0}
    assert _derived({"ike": {"running": 1, "child": None, "first": None, "ike_setup": None},
                     "manual": medians["manual"]}) == {"ike_cost_s": None, "e2e_setups_per_s": None}
    assert _median([None, 3.0, 1.0, 2.0]) == 2.0 and _median([None]) is None


def test_first_reply_keeps_sending_until_answered_and_says_when() -> None:
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind(("127.0.0.1", 0))
    port = echo.getsockname()[1]

    def answer_third() -> None:
        for _i in range(3):
            data, source = echo.recvfrom(100)
        echo.sendto(data, source)

    thread = threading.Thread(target=answer_third)
    thread.start()
    before = time.time()
    got = first_reply("127.0.0.1", port, interval=0.01, timeout=5)
    thread.join()
    echo.close()
    assert got["sent"] >= 3 and before <= got["first_reply"] <= time.time()


def test_first_reply_gives_up_at_its_timeout() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        got = first_reply("127.0.0.1", silent.getsockname()[1], interval=0.01, timeout=0.1)
    assert got["first_reply"] is None and got["sent"] > 1


def test_the_ike_exchange_is_timed_from_the_agents_own_log(tmp_path) -> None:
    log = tmp_path / "agent.log"
    log.write_text("2026-12-03 08:00:41,720 natlab.agent INFO agent h1: 38 leases granted by the gateway\n"
                   '2026-12-03 08:00:41,753 natlab.agent.ike INFO ike: {"event": "IkeEstablished"}\n'
                   '2026-12-03 08:00:41,754 natlab.agent.ike INFO ike: {"event": "ChildEstablished"}\n'
                   '2026-12-03 08:00:49,000 natlab.agent.ike INFO ike: {"event": "ChildEstablished"}\n')
    assert ike_setup(log) == 0.034
    log.write_text("2026-12-03 08:00:41,720 natlab.agent INFO agent h1: 38 leases granted by the gateway\n")
    assert ike_setup(log) is None
