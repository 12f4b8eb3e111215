"""VMess: ``crypto`` (keys, KDF, AuthID), ``header`` (request/response headers), ``body``
(chunk framing and ciphers) and ``replay`` are sans-IO; ``stream`` wraps a transport stream
in the body codec; ``inbound`` and ``outbound`` do the handshakes."""
