"""``natlab bench ike --e2e``'s arithmetic and its first-reply probe (loopback, no root)."""

from __future__ import annotations

import socket
import threading
import time

from conformance.bench_ike_e2e import _derived, _median
from conformance.probes import first_reply


def test_ike_cost_is_the_difference_of_the_medians_and_setups_per_second_one_over_the_setup() -> None:
    medians = {"ike": {"running": 0.8, "child": 1.05, "first": 1.1}, "manual": {"running": 0.8, "child": None,
                                                                               "first": 0.85}}
    assert _derived(medians) == {"ike_cost_s": 0.25, "e2e_setups_per_s": 4.0}
    assert _derived({"ike": {"running": 1, "child": None, "first": None}, "manual": medians["manual"]}) == {
        "ike_cost_s": None, "e2e_setups_per_s": None}
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
