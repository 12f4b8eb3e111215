"""Protocols: inbounds turn accepted connections into sessions for the dispatcher, outbounds
carry a session to its destination.

One module (or subpackage) per protocol: ``dokodemo`` (inbound), ``freedom`` and ``blackhole``
(outbounds), and both ways ``vmess/`` (``header``/``body``/``crypto`` are the sans-IO codec,
``inbound``/``outbound`` the I/O), ``vless/``, ``shadowsocks/``, ``socks/`` and ``http/``
(each a sans-IO ``codec``, plus ``inbound``/``outbound``). Shared by them: ``wire``
(``ProtocolError``, addresses in SOCKS's and VMess's layouts, sans-IO) and ``streams``
(handshakes under a deadline, draining a bad peer, early bytes, an in-memory pipe).

A protocol reads and writes a ``net.stream.Stream`` and dials through ``transport``, so it
never knows which transport carries it. A new protocol gets its module here and one line in
``instance.build_inbound``/``build_outbound``.
"""
