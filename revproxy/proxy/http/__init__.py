"""The HTTP proxy protocol: ``codec`` is sans-IO (heads, body ends, V2Ray's rewriting);
``inbound`` serves CONNECT and absolute-URI requests, ``outbound`` tunnels with CONNECT."""
