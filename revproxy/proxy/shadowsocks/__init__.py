"""Shadowsocks with V2Ray 4.34's AEAD methods and ``none``: ``crypto`` (methods, keys, the
chunked stream and packet encryption) and ``codec`` (destinations on the wire) are sans-IO;
``stream`` wraps a transport stream in the chunk cipher; ``inbound`` and ``outbound`` do the
handshakes (TCP; UDP packets on the outbound)."""
