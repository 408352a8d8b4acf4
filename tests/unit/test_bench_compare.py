"""``natlab bench compare``'s summary, table and plot, from runs built by hand (the live part is a benchmark)."""

from __future__ import annotations

import argparse

import pytest

from conformance import bench_compare as bc
from conformance.plots import compare
from netwire.plan import server_ip


def _run(tcp: float, udp: float, wire: float, cpu: dict[str, float], quiet: dict | None = None) -> dict:
    return {"tcp_bps": tcp * 1e6, "udp_bps": udp * 1e6, "wire_bytes_per_payload_byte": wire, "first_protected_s": 0.4,
            "setup_s": 1.2, "data_packet_ip_bytes": 1464, "cpu_us_per_packet": cpu, **({"quiet": quiet} if quiet else {})}


def _result() -> dict:
    quiet = {"seconds": 21.0, "keepalives": 1, "keepalives_per_hour": 171.4, "keepalive_bytes_per_hour": 4971}
    runs = {
        bc.SEED: [_run(150, 120, 1.07, {"h1": 20.0, "srv1": 15.0}, quiet), _run(160, 110, 1.07, {"h1": 22.0, "srv1": 14.0})],
        bc.NATT: [_run(140, 100, 1.08, {"h1": 25.0, "srv1": 18.0}, quiet), _run(130, 90, 1.08, {"h1": 24.0, "srv1": 19.0})],
        bc.SWAN: [_run(400, 300, 1.08, {"h1": 9.0, "srv1": 10.0}, quiet), _run(260, 280, 1.08, {"h1": 8.0, "srv1": 9.0})],
        bc.CLEAR: [_run(900, 500, 1.03, {}), _run(800, 450, 1.03, {})],
    }
    modes = {bc.SEED: {"esp-transport": "works", "ah-transport": "works"},
             bc.NATT: {"esp-tunnel": "works", "ah-tunnel": "fails: no CHILD_SA"}}
    path = {"fast_path": 100, "slow_path": 0, "bypass": 0, "to_controller": 2, "esp_entries": []}
    scaling = {1: {bc.SEED: {"aggregate_bps": 150e6, "per_client_bps": [150e6], "path": path},
                   bc.NATT: {"error": "no CHILD_SA"}}}
    args = argparse.Namespace(seconds=3, rounds=2, udp_rate="400M", quiet=21)
    return bc.summarise(runs, modes, scaling, {"slower": bc.NATT, "tcp_bps": {}}, args)


def test_summary_takes_medians_and_the_natlab_to_strongswan_ratio_round_by_round():
    result = _result()
    assert result["medians"][bc.SEED]["tcp_bps"] == 155e6
    assert result["medians"][bc.NATT]["cpu_us_per_packet"] == {"h1": 24.5, "srv1": 18.5}
    assert result["natlab_natt_over_strongswan"]["per_round"] == [0.35, 0.5]
    assert result["natlab_natt_over_strongswan"]["of_medians"] == round(135 / 330, 3)
    assert result["medians"][bc.CLEAR]["quiet"] is None


def test_table_shows_every_variant_the_modes_the_scaling_and_failures_as_failures():
    table = bc.format_table(_result())
    for text in (bc.SEED, bc.NATT, bc.SWAN, bc.CLEAR, "ah-tunnel", "fails: no CHILD_SA", "1 clients", "error",
                 "natlab NAT-T / strongSwan"):
        assert text in table, text


def test_plot_is_a_png():
    assert compare(_result()).startswith(b"\x89PNG")


def test_iperf3_output_without_json_is_an_error_not_a_figure():
    class Host:
        def cmd(self, _: str) -> str:
            return "iperf3: error - unable to connect to server"

    got = bc.iperf3(Host(), server_ip(1), None, seconds=1)
    assert got["bps"] == 0.0 and "unable to connect" in got["error"]


def test_rounds_below_one_are_refused_with_the_value_named(capsys):
    parser = argparse.ArgumentParser()
    bc.add_arguments(parser)
    assert parser.parse_args(["--rounds", "3"]).rounds == 3
    for bad in ("0", "-1", "two"):
        with pytest.raises(SystemExit):
            parser.parse_args(["--rounds", bad])
        assert f"rounds {bad!r}" in capsys.readouterr().err
