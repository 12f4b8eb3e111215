"""Protocols: inbounds turn accepted connections into sessions for the dispatcher, outbounds
carry a session to its destination.

One module (or subpackage) per protocol: ``dokodemo`` (inbound), ``freedom`` and ``blackhole``
(outbounds), ``vmess/`` (both ways: ``header``/``body``/``crypto`` are the sans-IO codec,
``inbound``/``outbound`` the I/O). A protocol reads and writes a ``net.stream.Stream`` and
dials through ``transport``, so it never knows which transport carries it. A new protocol
gets its module here and one line in ``instance.build_inbound``/``build_outbound``.
"""
