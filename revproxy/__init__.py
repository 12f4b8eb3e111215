"""revproxy: a V2Ray-compatible reverse tunnel.

A *bridge* on a hidden host dials out to a *portal* on a public host; the portal serves
public visitors through the bridge's tunnels. Data flows one way::

    inbound (dokodemo-door, vmess)  ->  dispatcher  ->  routing  ->  outbound
                                                                (freedom, vmess, blackhole, portal)

The reverse feature plugs into that flow: a portal is an outbound, a bridge is a source of
sessions with its own inbound tag. Protocol codecs (``proxy.vmess``, ``mux.frame``,
``reverse.control``) are sans-IO: bytes in, bytes or events out. Sockets live in the proxies,
the mux endpoints and ``relay``.
"""

__version__ = "0.1.0"
