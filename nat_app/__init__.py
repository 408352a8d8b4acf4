"""The extensible NAT: pure decision logic (table, allocation, translation) and
a thin os-ken shell (``app.py``) that turns decisions into OpenFlow."""
