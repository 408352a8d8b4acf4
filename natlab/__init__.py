"""natlab's composition root: the ``natlab`` command and the wiring of the parts.

Everything else sits below it: ``netwire`` (wire formats and the addressing plan), ``nat_app`` (the NAT),
``client_agent`` (the IPsec agent and client module), ``topo`` (the Mininet testbed) and ``conformance``
(scenarios, judges, reports, benchmarks). Only this package may import all of them; none of them imports it
(``tests/unit/test_layers.py``).
"""
