"""The scenarios. Each module declares its own with ``conformance.scenario.scenario`` (name, behaviours,
testbed, cells, order); importing this package imports them all, and ``conformance.scenario.registered()``
lists them in run order. A new scenario module is added to the import below, and nowhere else."""

from conformance.scenarios import baseline, behave, client, ftp, ike, leases, napt  # noqa: F401  (importing declares their scenarios)
