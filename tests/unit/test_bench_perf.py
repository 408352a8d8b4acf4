"""The performance benchmarks' sans-IO parts (bench core, bench nat-core) run and report what they claim."""

from __future__ import annotations

from conformance import bench_core, bench_nat_core


def test_nat_core_reports_each_step_per_window_while_the_table_grows(tmp_path):
    rows = bench_nat_core.first_packets(20, 10, tmp_path)
    assert [r["entries"] for r in rows] == [10, 20]  # one NAPT entry per new connection
    assert all(r[s] > 0 for r in rows for s in bench_nat_core.STEPS)
    assert "conn/s" in bench_nat_core.format_table(rows)


def test_core_goals_are_compensation_against_encapsulation():
    us = {"tcp": dict.fromkeys(bench_core.FIGURES, 3.0) | {"before_protect": 1.0, "after_unprotect": 2.0}}
    goals = bench_core.goals(us)["tcp"]
    assert goals["out_over_encapsulate"] == round(1 / 3, 3) and goals["in_over_decapsulate"] == round(2 / 3, 3)
    table = bench_core.format_table({"us_per_packet": {"current": us}, "goals": bench_core.goals(us), "rounds_run": 1})
    assert "goal <= 1 us" in table and "before_protect" in table


def test_core_best_takes_each_figures_minimum_over_rounds():
    rounds = [{"udp": {"encapsulate": 5.0}}, {"udp": {"encapsulate": 4.0}}]
    assert bench_core.best(rounds) == {"udp": {"encapsulate": 4.0}}


def test_table_scale_finds_every_entry_both_ways_and_weighs_them():
    scale = bench_nat_core.table_scale(500, lookups=2000)
    assert scale["entries"] == 500 and scale["bytes_per_entry"] > 0
    assert scale["lookups_per_second"]["out"] > 0 and scale["lookups_per_second"]["in"] > 0
