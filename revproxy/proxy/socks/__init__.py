"""SOCKS: ``codec`` is sans-IO (the server's SOCKS4/4a/5 handshake, the client's SOCKS5
handshake, UDP datagrams); ``inbound`` and ``outbound`` do the I/O."""
