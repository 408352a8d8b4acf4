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


def test_nat_core_against_a_baseline_takes_each_steps_minimum_and_prints_the_ratio_of_totals():
    steps = dict.fromkeys(bench_nat_core.STEPS, 1.0)
    rounds = [[{"entries": 10, **steps, "os-ken": 2.0}], [{"entries": 10, **steps, "journal": 0.5, "os-ken": 3.0}]]
    assert bench_nat_core.best_rows(rounds) == [{"entries": 10, **steps, "journal": 0.5, "os-ken": 2.0}]
    base = [{"entries": 10, **dict.fromkeys(bench_nat_core.STEPS, 2.0), "os-ken": 1.0}]
    slow = {"clients": 3, "us_per_packet": 10.0}
    table = bench_nat_core.format_comparison("main", {"baseline": {"rows": base, "slow": {**slow, "us_per_packet": 30.0}},
                                                      "current": {"rows": bench_nat_core.best_rows(rounds), "slow": slow}})
    assert "main vs this tree" in table and "8.0       3.5    2.3x" in table and "30.0 -> 10.0 us (3.0x)" in table


def test_the_slow_path_figure_is_a_packet_the_controller_delivers():
    slow = bench_nat_core.slow_path(3, packets=200)
    assert slow["clients"] == 3 and slow["us_per_packet"] > 0


def test_os_ken_parses_the_flow_stats_reply_the_benchmark_builds_flow_by_flow():
    stats = bench_nat_core.flow_stats_parse(20)
    assert stats["flows"] == 20 and stats["us_per_flow"] > 0
