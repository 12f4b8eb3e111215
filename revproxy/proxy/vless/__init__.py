"""VLESS (v2fly's, version 0, no flow): ``codec`` is sans-IO (headers, UDP packets, the
fallback table); ``stream`` wraps a transport stream in the body framing; ``inbound`` (with
V2Ray 4.34's ``fallbacks``) and ``outbound`` do the handshakes."""
