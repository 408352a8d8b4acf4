"""Crash-only shells: an exception in an os-ken handler or greenlet is logged, counted, and either
recovered from (the core is still consistent and saves) or ends the controller with a non-zero status."""

from __future__ import annotations

import threading

import pytest

from nat_app import app
from nat_app.config import NatConfig
from nat_app.decide import NatCore


class Died(SystemExit):
    pass


class Shell:
    """The parts of NatApp its guards use, without os-ken's event loop or a switch."""

    crashed = app.NatApp.crashed
    _clock = app.NatApp._clock

    def __init__(self) -> None:
        self.core = NatCore(NatConfig())
        self.store = None
        self.lock = threading.Lock()
        self.ticks = 0

    @app.guarded
    def handler(self, error: Exception | None) -> str:
        if error is not None:
            raise error
        return "done"

    @app.guarded
    def _tick(self, n: int) -> None:
        self.ticks += 1
        raise RuntimeError("tick broke")


@pytest.fixture(autouse=True)
def no_exit(monkeypatch):
    def die(why: str) -> None:
        raise Died(why)

    monkeypatch.setattr(app, "die", die)
    monkeypatch.setattr(app.hub, "sleep", lambda s: None)


def test_an_exception_in_a_handler_is_counted_and_the_sound_controller_goes_on(caplog):
    shell = Shell()
    assert shell.handler(KeyError("boom")) is app._FAILED
    assert shell.core.counters["shell_exception:handler"] == 1
    assert "Traceback" in caplog.text and "KeyError: 'boom'" in caplog.text
    assert shell.handler(None) == "done"


def test_an_exception_that_left_the_table_inconsistent_ends_the_controller():
    shell = Shell()
    shell.core.table._in[("x",)] = object()  # an index out of step with the others
    with pytest.raises(Died, match="unsound"):
        shell.handler(ValueError("half-done"))


def test_a_clock_that_keeps_failing_ends_the_controller_instead_of_stopping_expiry():
    shell = Shell()
    with pytest.raises(Died, match="clock failed 3 times"):
        shell._clock()
    assert shell.ticks == app.MAX_CLOCK_FAILURES
    assert shell.core.counters["shell_exception:_tick"] == app.MAX_CLOCK_FAILURES
