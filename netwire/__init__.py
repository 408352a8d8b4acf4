"""Sans-IO wire formats shared by the NAT and the client agent.

Nothing in this package opens a socket or a file: every function takes bytes
and returns bytes or plain values, so both sides of the testbed import one codec
per wire format and unit tests need neither root nor a network.
"""

__pure__ = True  # sans-IO: the purity test checks it (and, in an __init__, its whole package)
