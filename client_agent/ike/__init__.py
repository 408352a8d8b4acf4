"""A sans-IO IKEv2 (RFC 7296): codec, crypto, proposals, selectors and the IKE SA state machine.

Nothing here opens a socket or reads a clock: :class:`~client_agent.ike.session.IkeSession`
takes datagrams and ``now`` and returns datagrams, a timer deadline and events,
like aioquic's ``QuicConnection``. The shells (the agent, the interop tests'
small UDP driver) move the bytes.

Behind the extensible NAT the seed's FIG. 8 applies: the initiator's SPI (the
ISAKMP cookie's successor, 64 bits at offset 0 after UDP port 500) and every
inbound CHILD SPI come from leases, so the session takes them from its caller
instead of drawing them itself.
"""
