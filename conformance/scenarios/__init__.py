"""Scenarios, each a function (Context) -> [ScenarioResult], in the order they run."""

from conformance.scenarios.napt import nat_auto, nat_drop

SCENARIOS = [nat_auto, nat_drop]
