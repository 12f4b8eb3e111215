"""The parser of ``streamSettings`` (V2Ray's infra/conf/transport_internet.go): the network
("tcp" with its optional HTTP header, or "ws"), ``security: "tls"`` and its certificates,
and ``sockopt``.

As in V2Ray, only the selected network's settings are read (``wsSettings`` under
``network: "tcp"`` is ignored) and ``tlsSettings`` only under ``security: "tls"``.
Certificate files are read here, so a missing or unreadable one is a configuration error
that ``revproxy check`` reports; the transport loads them again when a configuration
generation starts, which picks up renewed certificates on reload.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from typing import Any

from revproxy.config import fields as f
from revproxy.config.errors import Invalid, Node, show
from revproxy.config.fields import NOT_SUPPORTED, Obj
from revproxy.config.model import (
    CertificateConfig,
    Headers,
    HTTPHeaderConfig,
    HTTPRequestConfig,
    HTTPResponseConfig,
    SockoptConfig,
    StreamConfig,
    TLSConfig,
    WebSocketConfig,
)

_NETWORKS = {"tcp": "tcp", "ws": "ws", "websocket": "ws"}
_V2RAY_ONLY_NETWORKS = ("kcp", "mkcp", "h2", "http", "ds", "domainsocket", "quic")
_UNUSED_SETTINGS = ("kcpSettings", "httpSettings", "dsSettings", "quicSettings")
MAX_PEM_FILE = 1 << 20

# V2Ray's defaults for the HTTP header (infra/conf/transport_authenticators.go).
DEFAULT_REQUEST = HTTPRequestConfig(
    version="1.1", method="GET", paths=("/",),
    headers=(
        ("Host", ("www.baidu.com", "www.bing.com")),
        ("User-Agent", (
            "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/53.0.2785.143 Safari/537.36",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 10_0_2 like Mac OS X) AppleWebKit/601.1 "
            "(KHTML, like Gecko) CriOS/53.0.2785.109 Mobile/14A456 Safari/601.1.46")),
        ("Accept-Encoding", ("gzip, deflate",)),
        ("Connection", ("keep-alive",)),
        ("Pragma", ("no-cache",)),
    ))
DEFAULT_RESPONSE = HTTPResponseConfig(
    version="1.1", status="200", reason="OK",
    headers=(
        ("Content-Type", ("application/octet-stream", "video/mpeg")),
        ("Transfer-Encoding", ("chunked",)),
        ("Connection", ("keep-alive",)),
        ("Pragma", ("no-cache",)),
        ("Cache-Control", ("private", "no-cache")),
    ))
# Headers the WebSocket handshake writes itself (V2Ray's client refuses to dial with them).
_HANDSHAKE_HEADERS = ("upgrade", "connection", "sec-websocket-key", "sec-websocket-version",
                      "sec-websocket-extensions")


def stream_settings(node: Node, raw: Any, *, server: bool) -> StreamConfig:
    """``streamSettings`` of an inbound (``server``) or an outbound."""
    o = Obj(node, raw, ("network", "security", "tlsSettings", "tcpSettings", "wsSettings",
                        "sockopt"),
            ignored=_UNUSED_SETTINGS)
    network = o.get("network", _network, "tcp")
    http_header = websocket = None
    accept_proxy_protocol = False
    if network == "tcp":
        http_header, accept_proxy_protocol = o.nested("tcpSettings", _tcp_settings,
                                                      (None, False))
    elif network == "ws":
        websocket, accept_proxy_protocol = o.nested("wsSettings", _ws_settings,
                                                    (WebSocketConfig(), False))
    tls = None
    if o.get("security", _security, "none") == "tls":
        tls = o.nested("tlsSettings", lambda n, v: _tls(n, v, server), None)
        if tls is None and not o.has("tlsSettings"):
            tls = _tls(node.at("tlsSettings"), {}, server)
    return StreamConfig(
        network=network,
        http_header=http_header,
        websocket=websocket,
        accept_proxy_protocol=accept_proxy_protocol,
        tls=tls,
        sockopt=o.nested("sockopt", _sockopt, SockoptConfig()),
    )


def _network(value: Any) -> str:
    name = f.string(value).lower()
    if name in _NETWORKS:
        return _NETWORKS[name]
    if name in _V2RAY_ONLY_NETWORKS:
        raise Invalid(f'transport {show(value)} is {NOT_SUPPORTED} (only "tcp" and "ws")')
    raise Invalid(f"unknown transport {show(value)}{f.suggest(value, _NETWORKS)}")


def _security(value: Any) -> str:
    name = f.string(value).lower()
    if name in ("", "none"):
        return "none"
    if name == "tls":
        return "tls"
    if name in ("xtls", "reality"):
        raise Invalid(f'security {show(value)} is {NOT_SUPPORTED} (only "none" and "tls")')
    raise Invalid(f'unknown security {show(value)} (expected "none" or "tls")')


# -- tcp and its HTTP header

def _tcp_settings(node: Node, raw: Any) -> tuple[HTTPHeaderConfig | None, bool]:
    o = Obj(node, raw, ("header", "acceptProxyProtocol"))
    return (o.nested("header", _tcp_header, None),
            o.get("acceptProxyProtocol", f.boolean, False))


def _tcp_header(node: Node, raw: Any) -> HTTPHeaderConfig | None:
    o = Obj(node, raw, ("type", "request", "response"))
    if o.get("type", f.choice("none", "http"), "none") == "none":
        return None  # V2Ray reads no request or response then
    return HTTPHeaderConfig(
        request=o.nested("request", _http_request, DEFAULT_REQUEST),
        response=o.nested("response", _http_response, DEFAULT_RESPONSE),
    )


def _http_request(node: Node, raw: Any) -> HTTPRequestConfig:
    o = Obj(node, raw, ("version", "method", "path", "headers"))
    d = DEFAULT_REQUEST
    return HTTPRequestConfig(
        version=o.get("version", _token, "") or d.version,
        method=o.get("method", _token, "") or d.method,
        paths=o.get("path", _paths, ()) or d.paths,
        headers=o.nested("headers", _http_headers, ()) or d.headers,
    )


def _http_response(node: Node, raw: Any) -> HTTPResponseConfig:
    o = Obj(node, raw, ("version", "status", "reason", "headers"))
    d = DEFAULT_RESPONSE
    return HTTPResponseConfig(
        version=o.get("version", _token, "") or d.version,
        status=o.get("status", _token, "") or d.status,
        reason=o.get("reason", _header_text, "") or d.reason,
        headers=o.nested("headers", _http_headers, ()) or d.headers,
    )


def v2ray_string_list(value: Any) -> tuple[str, ...]:
    """V2Ray's StringList: a list of strings, or one string split at commas (nothing
    trimmed: "gzip, deflate" is "gzip" and " deflate")."""
    if isinstance(value, str):
        return tuple(value.split(","))
    return f.string_list(value)


def _http_headers(node: Node, raw: Any) -> Headers:
    """A JSON object of header name -> value list, sorted by name as V2Ray sends them."""
    if not isinstance(raw, dict):
        raise Invalid(f"expected an object, got {show(raw)}")
    headers = []
    if any(not isinstance(k, str) for k in raw):
        node.report("header names must be strings")
    for name in sorted(k for k in raw if isinstance(k, str)):
        here = node.at(name)
        if raw[name] is None:
            here.report("empty HTTP header value")
            continue
        try:
            values = tuple(_header_text(v) for v in v2ray_string_list(raw[name]))
            headers.append((_header_name(name), values))
        except Invalid as exc:
            here.report(str(exc))
    return tuple(headers)


def _paths(value: Any) -> tuple[str, ...]:
    return tuple(_header_text(path) for path in v2ray_string_list(value))


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_name(value: Any) -> str:
    name = f.string(value)
    if not name or not set(name) <= _TOKEN:
        raise Invalid(f"{show(value)} is not an HTTP header name")
    return name


def _header_text(value: Any) -> str:
    """Text that goes into an HTTP head: no line breaks."""
    text = f.string(value)
    if any(c in text for c in "\r\n\0"):
        raise Invalid(f"{show(value)} has a line break (it would break the HTTP head)")
    return text


def _token(value: Any) -> str:
    text = _header_text(value)
    if " " in text or "\t" in text:
        raise Invalid(f"{show(value)} has a space")
    return text


# -- ws

def _ws_settings(node: Node, raw: Any) -> tuple[WebSocketConfig, bool]:
    o = Obj(node, raw, ("path", "headers", "acceptProxyProtocol"))
    path = o.get("path", _ws_path, "/")
    headers = o.nested("headers", _ws_headers, ())
    return (WebSocketConfig(path=path, headers=headers),
            o.get("acceptProxyProtocol", f.boolean, False))


def _ws_path(value: Any) -> str:
    """V2Ray's normalized path: "/" if empty, a "/" put in front if missing."""
    path = f.string(value)
    if any(c.isspace() or c == "\0" for c in path):
        raise Invalid(f"{show(value)} is not a URL path (it has a space or line break)")
    if not path.startswith("/"):
        path = "/" + path
    return path


def _ws_headers(node: Node, raw: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise Invalid(f"expected an object, got {show(raw)}")
    headers = []
    for name, value in raw.items():
        here = node.at(str(name))
        try:
            name = _header_name(name)
            if name.lower() in _HANDSHAKE_HEADERS:
                raise Invalid(f"header {show(name)} is written by the WebSocket handshake "
                              "itself (V2Ray refuses to dial with it)")
            headers.append((name, _header_text(value)))
        except Invalid as exc:
            here.report(str(exc))
    return tuple(headers)


# -- tls

def _tls(node: Node, raw: Any, server: bool) -> TLSConfig:
    o = Obj(node, raw, ("serverName", "alpn", "allowInsecure", "disableSystemRoot",
                        "enableSessionResumption", "certificates"),
            unsupported={"pinnedPeerCertificateChainSha256":
                         f"{NOT_SUPPORTED} (a V2Ray 4.38 key): the server's certificate would "
                         "go unpinned"})
    before = node.problem_count()
    certificates = o.nested("certificates", lambda n, v: f.items(n, v, _certificate), ())
    if server and o.ok and node.problem_count() == before and not any(
            c.usage == "encipherment" and (c.key_file or c.key) for c in certificates):
        (node.at("certificates") if o.has("certificates") else node).report(
            "a TLS server needs a certificate with its key (certificateFile and keyFile, or "
            "certificate and key)")
    return TLSConfig(
        server_name=o.get("serverName", _server_name, None),
        alpn=o.get("alpn", _alpn, ()),
        allow_insecure=o.get("allowInsecure", f.boolean, False),
        disable_system_root=o.get("disableSystemRoot", f.boolean, False),
        session_resumption=o.get("enableSessionResumption", f.boolean, False),
        certificates=certificates,
    )


def _server_name(value: Any) -> str | None:
    return f.host(value) if f.string(value) else None


def _alpn(value: Any) -> tuple[str, ...]:
    protocols = v2ray_string_list(value)
    for protocol in protocols:
        if not 0 < len(protocol.encode()) < 256:
            raise Invalid(f"{show(protocol)} is not an ALPN protocol name (1 to 255 bytes)")
    return protocols


def _certificate(node: Node, raw: Any) -> CertificateConfig:
    o = Obj(node, raw, ("certificateFile", "certificate", "keyFile", "key", "usage"))
    before = node.problem_count()
    usage = o.get("usage", _usage, "encipherment")
    cert_file = o.get("certificateFile", f.string, "") or None
    cert_text = o.get("certificate", _pem_lines, "") or None
    key_file = o.get("keyFile", f.string, "") or None
    key_text = o.get("key", _pem_lines, "") or None
    if not o.ok or node.problem_count() > before:  # one mistake, one line
        return CertificateConfig()
    if cert_file is None and cert_text is None:
        node.report('no certificate: give "certificateFile" or "certificate"')
        return CertificateConfig()
    # V2Ray prefers the file when both are given.
    cert_pem = _read_pem(node.at("certificateFile"), cert_file) if cert_file else cert_text
    key_pem = _read_pem(node.at("keyFile"), key_file) if key_file else key_text
    cert_node = node.at("certificateFile" if cert_file else "certificate")
    key_node = node.at("keyFile" if key_file else "key")
    if cert_pem is not None and _check_certificate(cert_node, cert_pem) and \
            key_pem is not None and usage == "encipherment":
        _check_key(key_node, cert_pem, key_pem)
    return CertificateConfig(
        certificate_file=os.path.abspath(cert_file) if cert_file else None,
        certificate=None if cert_file else cert_text,
        key_file=os.path.abspath(key_file) if key_file else None,
        key=None if key_file else key_text,
        usage=usage,
    )


def _usage(value: Any) -> str:
    usage = f.choice("encipherment", "verify", "issue")(value)
    if usage == "issue":
        raise Invalid(f'usage "issue" (certificates issued on the fly) is {NOT_SUPPORTED}')
    return usage


def _pem_lines(value: Any) -> str:
    """Inline PEM: a list of lines (V2Ray joins them with newlines) or one string."""
    if isinstance(value, str):
        return value
    return "\n".join(f.string_list(value))


def _read_pem(node: Node, path: str) -> str | None:
    """The text of a PEM file, or None after reporting why it cannot be used. (Opened
    without blocking: a FIFO must not hang ``revproxy check``.)"""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                problem = "not a regular file"
            else:
                data = os.read(fd, MAX_PEM_FILE + 1)
                if len(data) <= MAX_PEM_FILE:
                    return data.decode("ascii", "replace")
                problem = f"larger than {MAX_PEM_FILE // 1024} KiB: not a PEM file"
        finally:
            os.close(fd)
    except OSError as exc:
        problem = exc.strerror or str(exc)
    except ValueError as exc:  # an embedded NUL
        problem = str(exc)
    node.report(f'cannot read "{path}": {problem}')  # the whole path, however long
    return None


def _check_certificate(node: Node, cert_pem: str) -> bool:
    """Whether OpenSSL loads the PEM certificate(s); reports why not."""
    if "-----BEGIN CERTIFICATE-----" not in cert_pem:
        node.report("no PEM certificate (-----BEGIN CERTIFICATE-----) in it")
        return False
    import ssl

    try:
        ssl.create_default_context(cadata=cert_pem)
    except (ssl.SSLError, ValueError) as exc:
        node.report(f"OpenSSL cannot read the certificate: {_ssl_reason(exc)}")
        return False
    return True


def _check_key(node: Node, cert_pem: str, key_pem: str) -> None:
    """Report a private key OpenSSL cannot load, or one that is not the certificate's."""
    if "PRIVATE KEY-----" not in key_pem:
        node.report("no PEM private key (-----BEGIN ... PRIVATE KEY-----) in it")
        return
    import ssl

    try:
        _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert_pem, key_pem)
    except (ssl.SSLError, ValueError) as exc:
        reason = _ssl_reason(exc)
        if "mismatch" in reason or "no certificate assigned" in reason:
            node.report("this key is not the certificate's (key values mismatch)")
        else:
            node.report(f"OpenSSL cannot load the key with the certificate: {reason}")


def _load_pair(context: Any, cert_pem: str, key_pem: str) -> None:
    """``load_cert_chain`` from memory (it only takes paths): through anonymous files."""
    with _memory_file(cert_pem) as cert_path, _memory_file(key_pem) as key_path:
        context.load_cert_chain(cert_path, key_path)


@contextlib.contextmanager
def _memory_file(text: str) -> Iterator[str]:
    """An anonymous in-memory file holding ``text``, as a path (Linux memfd)."""
    fd = os.memfd_create("revproxy-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, text.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _ssl_reason(exc: Exception) -> str:
    reason = getattr(exc, "reason", None)
    if reason:
        return str(reason).lower().replace("_", " ")
    return str(exc.args[1] if len(exc.args) > 1 else exc)


# -- sockopt

def _sockopt(node: Node, raw: Any) -> SockoptConfig:
    o = Obj(node, raw, ("mark", "tcpFastOpen", "tproxy"),
            warned={"acceptProxyProtocol": "ignored, as V2Ray 4.34 does: it takes "
                                           "acceptProxyProtocol from tcpSettings or wsSettings"})
    return SockoptConfig(
        mark=o.get("mark", _mark, 0),
        tcp_fast_open=o.get("tcpFastOpen", f.boolean, None),
        tproxy=o.get("tproxy", _tproxy, "off"),
    )


def _mark(value: Any) -> int:
    """SO_MARK: V2Ray reads an int32; the kernel's mark is its 32 bits."""
    return f.integer(-(2**31), 2**32 - 1)(value) & 0xFFFFFFFF


def _tproxy(value: Any) -> str:
    return "off" if f.string(value) == "" else f.choice("off", "redirect", "tproxy")(value)

