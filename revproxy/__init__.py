"""revproxy: a V2Ray-compatible reverse tunnel, as a multi-core Unix server.

A *bridge* on a hidden host dials out to a *portal* on a public host; the portal serves
public visitors through the bridge's tunnels. Data flows one way, as in V2Ray::

    inbound  ->  dispatcher  ->  routing  ->  outbound
    (proxy/)     dispatcher.py   routing.py   (proxy/, reverse/portal.py)

The portal is an outbound; the bridge is a source of sessions with its own inbound tag.

The house, from the top floor down. A module imports only from its own floor or the floors
below; ``tests/unit/test_layers.py`` keeps it so and forbids import cycles.

``cli``, ``demo``
    The command line: ``revproxy run | check | status | reload | stop | uuid | demo``.
``server/``
    The process model. ``supervisor`` is the master: a new **signal** is handled in its
    ``_handle_signal`` (and, when workers obey it too, in ``server/worker.py``, the life of
    one forked worker). ``statetable`` is the shared-memory table: a new **state-table
    column** goes into its row structs and layout docstring (``WorkerRow``/``TunnelRow``),
    then into ``cluster`` (what workers publish and read) and ``status`` (what ``revproxy
    status`` shows). ``handoff`` passes a visitor's socket between workers; ``runfiles``
    keeps the master's pid file.
``instance``
    One configuration wired up: the inbounds, outbounds, dispatcher, portals and bridges of a
    ``Config``. A new protocol is hooked in here (``build_inbound``/``build_outbound``).
``reverse/``
    V2Ray's reverse proxy: ``portal``, ``bridge``, the ``control`` channel codec, ``balance``,
    and ``directory``, the interface through which they see the sibling workers' tunnels
    (``server/cluster.py`` implements it).
``proxy/``
    The protocols. A new **inbound or outbound protocol** gets its module here (next to
    ``dokodemo``, ``freedom``, ``blackhole``, ``vmess/``, ``vless/``, ``shadowsocks/``,
    ``socks/``, ``http/``) and its settings parser in ``config/proxies.py``.
``dispatcher``
    Hands a session to the outbound that routing picks; gives it its policy level's limits
    and sniffs the first bytes of a sniffing inbound's connections (with ``sniff``).
``dns``
    V2Ray's ``dns`` section: hosts, UDP and DNS-over-HTTPS servers (messages by dnspython),
    for freedom's ``domainStrategy`` and routing's IP strategies.
``transport/``
    ``streamSettings``: how a protocol's bytes travel (TCP and its HTTP header disguise,
    WebSocket, TLS). A new **transport** gets its module here and a branch in the package's
    ``dial``/``wrap``, the only two functions protocols call.
``mux/``
    Mux.Cool: the sans-IO ``frame`` codec, connections and their sessions.
``config/``
    V2Ray's JSON (and YAML) into frozen dataclasses; every error names its file and path.
``routing``
    V2Ray's field rules: a session (inbound tag, target, source, user, sniffed protocol)
    -> outbound tag, balancers included. On its floor: ``sniff``, the sans-IO HTTP Host /
    TLS SNI sniffers, and ``geodata``, the reader of V2Ray's geosite/geoip ``.dat`` files.
``net/``
    The I/O core: streams, the relay, accepting, dialing, greenlet reuse, sessions.
``log``
    V2Ray-style log lines. ``policy``: the per-level session limits (timeouts, buffers).

Codecs (``proxy.vmess`` header/body/crypto, the ``codec`` of ``proxy.vless``,
``proxy.shadowsocks``, ``proxy.socks`` and ``proxy.http``, ``mux.frame``, ``reverse.control``)
are sans-IO: bytes in, bytes or events out, tested and fuzzed without sockets.
"""

__version__ = "0.1.0"
