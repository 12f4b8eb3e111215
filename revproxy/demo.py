"""``revproxy demo``: a backend, a bridge and a portal on loopback, in one process.

The backend is a tiny web server standing for the hidden host's site; the bridge dials the
portal over VMess; a visitor's request to the portal's public port comes back through the
tunnel. The demo fetches the public URL once to prove the round trip, then serves until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid

import gevent
import gevent.socket
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from revproxy import log as logging_setup
from revproxy.config import parse_config
from revproxy.instance import Instance

DOMAIN = "test.v2fly.org"
PAGE = b"Hello from the hidden host, served through a revproxy tunnel.\n"


def _listener() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    sock.setblocking(False)  # served by gevent
    return sock


def _site(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(PAGE)))])
    return [PAGE]


def portal_config(user_id: str, public_port: int, tunnel_port: int,
                  loglevel: str = "warning") -> dict:
    """The V2Ray document's portal, on loopback ports."""
    return {
        "log": {"loglevel": loglevel},
        "reverse": {"portals": [{"tag": "portal", "domain": DOMAIN}]},
        "inbounds": [
            {"tag": "external", "listen": "127.0.0.1", "port": public_port,
             "protocol": "dokodemo-door",
             "settings": {"address": "127.0.0.1", "port": 80, "network": "tcp"}},
            {"tag": "interconn", "listen": "127.0.0.1", "port": tunnel_port,
             "protocol": "vmess", "settings": {"clients": [{"id": user_id}]}},
        ],
        "routing": {"rules": [
            {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"},
            {"type": "field", "inboundTag": ["interconn"], "outboundTag": "portal"},
        ]},
    }


def bridge_config(user_id: str, backend_port: int, tunnel_port: int,
                  security: str = "auto", loglevel: str = "warning") -> dict:
    """The V2Ray document's bridge, on loopback ports."""
    return {
        "log": {"loglevel": loglevel},
        "reverse": {"bridges": [{"tag": "bridge", "domain": DOMAIN}]},
        "outbounds": [
            {"tag": "out", "protocol": "freedom",
             "settings": {"redirect": f"127.0.0.1:{backend_port}"}},
            {"tag": "interconn", "protocol": "vmess",
             "settings": {"vnext": [{"address": "127.0.0.1", "port": tunnel_port,
                                     "users": [{"id": user_id, "security": security}]}]}},
        ],
        "routing": {"rules": [
            {"type": "field", "inboundTag": ["bridge"], "domain": [f"full:{DOMAIN}"],
             "outboundTag": "interconn"},
            {"type": "field", "inboundTag": ["bridge"], "outboundTag": "out"},
        ]},
    }


def fetch(port: int, timeout: float = 10.0) -> bytes:
    """One HTTP GET to the portal's public port; returns the response body."""
    with gevent.socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        conn.sendall(b"GET / HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")
        chunks = []
        while data := conn.recv(65536):
            chunks.append(data)
    response = b"".join(chunks)
    head, _, body = response.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ConnectionError(f"unexpected answer: {head[:60]!r}")
    return body


def run_demo(once: bool = False) -> int:
    logging_setup.setup(os.environ.get("REVPROXY_LOGLEVEL", "warning"))
    user_id = str(uuid.uuid4())
    backend, public, tunnel = _listener(), _listener(), _listener()
    backend_port, public_port, tunnel_port = (s.getsockname()[1] for s in (backend, public,
                                                                           tunnel))
    WSGIServer(backend, _site, log=None).start()
    portal = Instance(parse_config(portal_config(user_id, public_port, tunnel_port), "demo-portal"),
                    listeners={0: public, 1: tunnel})
    bridge = Instance(parse_config(bridge_config(user_id, backend_port, tunnel_port),
                                 "demo-bridge"))
    portal.start()
    bridge.start()
    url = f"http://127.0.0.1:{public_port}/"
    print(f"backend (hidden host)   http://127.0.0.1:{backend_port}/")
    print(f"portal tunnel port      127.0.0.1:{tunnel_port} (VMess, user {user_id})")
    print(f"public URL              {url}")
    try:
        body = fetch(public_port)
    except OSError as exc:
        print(f"round trip FAILED: {exc}")
        return 1
    print(f"GET {url} -> {body.decode().strip()!r}")
    print("round trip OK: visitor -> portal -> tunnel -> bridge -> backend")
    if once:
        bridge.stop(0)
        portal.stop(0)
        return 0
    print("serving; try: curl " + url + "   (Ctrl-C to stop)")
    stop = Event()
    gevent.signal_handler(signal.SIGINT, stop.set)
    gevent.signal_handler(signal.SIGTERM, stop.set)
    stop.wait()
    bridge.stop(0)
    portal.stop(0)
    return 0
