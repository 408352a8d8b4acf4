"""``natlab demo --only NAME[,NAME]``: registered scenario names only, an unknown one named with the valid ones."""

from __future__ import annotations

import argparse

import pytest

from conformance import runner
from conformance.scenario import registered
from natlab.cli import build_parser


def test_only_takes_registered_names_in_any_order() -> None:
    args = build_parser().parse_args(["demo", "--only", "cl-cookie, client-matrix"])
    assert args.only == ("cl-cookie", "client-matrix")


@pytest.mark.parametrize("value", ["client-matrix,client-matrixx", ",", "CLIENT-MATRIX"])
def test_an_unknown_name_is_an_error_naming_it_and_listing_the_valid_ones(value, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["demo", "--only", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--only" in err and "client-renew" in err and "cl-cookie" in err
    assert "client-matrixx" in err if "xx" in value else True


def test_help_lists_every_scenario(capsys) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["demo", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert all(r.name in out for r in registered())


def test_the_runner_runs_only_the_named_scenarios_in_run_order(monkeypatch, tmp_path) -> None:
    seen = {}

    def fake_suite(out, scenarios=None):
        seen["names"] = [r.name for r in scenarios]
        raise runner.TestbedError("stop here")

    monkeypatch.setattr(runner, "run_suite", fake_suite)
    args = argparse.Namespace(out=str(tmp_path), only=("cl-cookie", "client-matrix"))
    assert runner.main(args) == 1
    assert seen["names"] == ["client-matrix", "cl-cookie"]
