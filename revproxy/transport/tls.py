"""TLS (``security: "tls"``, ``tlsSettings``): Python's ``ssl`` on memory buffers over the
stream below, so the socket stays the gevent-driven ``SocketStream`` and a 64 KiB read
feeds OpenSSL several records at once.

As V2Ray 4.34 (transport/internet/tls) does:

- a client sends ``serverName``, else the address dialed if it is a name, and verifies the
  server's certificate against the system's roots (unless ``disableSystemRoot``) plus every
  configured certificate, unless ``allowInsecure``; it offers ``alpn``, by default
  "h2", "http/1.1" (only "http/1.1" under WebSocket), and presents a configured certificate
  that has its key if the server asks;
- a server serves the certificates of usage "encipherment" (picked by the name the client
  asks for, the first one otherwise), offers ``alpn``, by default "h2" under TCP
  ("http/1.1" under WebSocket: revproxy speaks no HTTP/2), and issues no session tickets
  unless ``enableSessionResumption``;
- under WebSocket a plain HTTP request gets Go's "Client sent an HTTP request to an HTTPS
  server" answer; anything else that is not TLS is closed.

Certificates are read when the layer is built, once per configuration generation.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from contextlib import contextmanager

from revproxy.net.stream import TunnelStream
from revproxy.transport.base import Address, TransportError
from revproxy.transport.settings import CertificateSettings, TLSSettings

GO_HTTP_TO_HTTPS = (b"HTTP/1.0 400 Bad Request\r\n\r\n"
                    b"Client sent an HTTP request to an HTTPS server.\n")
RECORD = 16384  # the most plaintext one TLS record holds: a read takes one record
_HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")  # Go's test for that answer


def _pem(certificate: CertificateSettings, key: bool = False) -> str:
    """The PEM text of a certificate (or its key): the file's, else the inline one."""
    path = certificate.key_file if key else certificate.certificate_file
    if path:
        try:
            with open(path, encoding="ascii", errors="replace") as pem:
                return pem.read()
        except OSError as exc:
            raise OSError(exc.errno, f"TLS: cannot read {path}: {exc.strerror}") from None
    return (certificate.key if key else certificate.certificate) or ""


@contextmanager
def _as_path(text: str) -> Iterator[str]:
    """``text`` in an anonymous memory file, as a path (``load_cert_chain`` takes paths)."""
    fd = os.memfd_create("revproxy-pem", os.MFD_CLOEXEC)
    try:
        os.write(fd, text.encode())
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _load_chain(context: ssl.SSLContext, certificate: CertificateSettings) -> None:
    try:
        if certificate.certificate_file and certificate.key_file:
            context.load_cert_chain(certificate.certificate_file, certificate.key_file)
            return
        with _as_path(_pem(certificate)) as cert_path, \
                _as_path(_pem(certificate, key=True)) as key_path:
            context.load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        where = certificate.certificate_file or "an inline certificate"
        raise OSError(f"TLS: cannot load {where} with its key: {exc}") from None


def _has_key(certificate: CertificateSettings) -> bool:
    return bool(certificate.key_file or certificate.key)


def _names(pem: str) -> frozenset[str]:
    """The DNS names a certificate is for (subject alternative names, else its CN)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return frozenset(name.lower() for name in names)


def _matches(names: frozenset[str], server_name: str) -> bool:
    server_name = server_name.lower()
    if server_name in names:
        return True
    _, dot, parent = server_name.partition(".")
    return bool(dot) and f"*.{parent}" in names


def client_context(settings: TLSSettings, alpn: tuple[str, ...]) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if settings.allow_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        if not settings.disable_system_root:
            context.load_default_certs()
        for certificate in settings.certificates:
            try:
                context.load_verify_locations(cadata=_pem(certificate))
            except ssl.SSLError as exc:
                raise OSError(f"TLS: cannot load a certificate to trust: {exc}") from None
    for certificate in settings.certificates:
        if certificate.usage == "encipherment" and _has_key(certificate):
            _load_chain(context, certificate)  # presented if the server asks
            break
    context.set_alpn_protocols(list(settings.alpn or alpn))
    return context


def server_context(settings: TLSSettings, alpn: tuple[str, ...]) -> ssl.SSLContext:
    contexts = []
    for certificate in settings.certificates:
        if certificate.usage != "encipherment" or not _has_key(certificate):
            continue
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _load_chain(context, certificate)
        context.set_alpn_protocols(list(settings.alpn or alpn))
        if not settings.session_resumption:
            context.options |= ssl.OP_NO_TICKET
            context.num_tickets = 0
        contexts.append((certificate, context))
    if not contexts:
        raise OSError("TLS: no certificate with a key to serve")
    first = contexts[0][1]
    if len(contexts) > 1:
        named = [(_names(_pem(certificate)), context) for certificate, context in contexts]

        def pick(sslobj: ssl.SSLSocket | ssl.SSLObject, server_name: str | None,
                 _context: ssl.SSLContext) -> None:
            if server_name:
                for names, context in named:
                    if _matches(names, server_name):
                        sslobj.context = context
                        return

        first.sni_callback = pick
    return first


class TLSLayer:
    """``tlsSettings`` as a transport layer: one side's context, ready."""

    __slots__ = ("context", "server_name", "answer_http")

    def __init__(self, settings: TLSSettings, *, server: bool, websocket: bool) -> None:
        if server:
            self.context = server_context(settings, ("http/1.1",) if websocket else ("h2",))
        else:
            self.context = client_context(
                settings, ("http/1.1",) if websocket else ("h2", "http/1.1"))
        self.server_name = settings.server_name
        self.answer_http = websocket  # a Go HTTP server answers plain HTTP at its TLS port

    def client(self, stream: TunnelStream, host: str, port: int) -> TunnelStream:
        name = self.server_name
        if name is None:
            name = host.strip("[]")  # a name is sent (SNI) and checked; an IP only checked
        tls = TLSStream(stream, self.context, server_hostname=name)
        tls.handshake()
        return tls

    def server(self, stream: TunnelStream, peer: Address) -> tuple[TunnelStream, Address]:
        tls = TLSStream(stream, self.context, server_side=True)
        try:
            tls.handshake()
        except ssl.SSLError:
            if self.answer_http and tls.first[:5] in _HTTP_STARTS:
                stream.send(GO_HTTP_TO_HTTPS)
            raise
        return tls, peer


class TLSStream:
    """A TLS connection over ``inner``, driven through memory buffers."""

    __slots__ = ("inner", "first", "_ssl", "_in", "_out", "_sending", "_done", "_ended")

    def __init__(self, inner: TunnelStream, context: ssl.SSLContext, *,
                 server_side: bool = False, server_hostname: str | None = None) -> None:
        self.inner = inner
        self.first = b""  # the first bytes received, for the answer to plain HTTP
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._in, self._out, server_side=server_side,
                                     server_hostname=server_hostname)
        self._sending = False  # a send waits on ``inner``: records must not cut in
        self._done = False  # the handshake finished
        self._ended = False  # the peer's close_notify came

    def handshake(self) -> None:
        sslobj, incoming, outgoing = self._ssl, self._in, self._out
        while True:
            try:
                sslobj.do_handshake()
                break
            except ssl.SSLWantReadError:
                if outgoing.pending:
                    self.inner.send(outgoing.read())
                data = self.inner.recv()
                if not data:
                    raise TransportError("TLS: closed during the handshake") from None
                if not self.first:
                    self.first = data
                incoming.write(data)
        self._done = True
        if outgoing.pending:
            self.inner.send(outgoing.read())

    @property
    def alpn(self) -> str | None:
        return self._ssl.selected_alpn_protocol()

    def recv(self) -> bytes:
        sslobj, incoming = self._ssl, self._in
        while not self._ended:
            if not incoming.pending and not sslobj.pending():
                data = self.inner.recv()
                if not data:
                    return b""  # closed without close_notify: an end all the same
                incoming.write(data)
            chunks = []
            try:
                while True:
                    chunk = sslobj.read(RECORD)
                    if not chunk:  # the end, as some versions report close_notify
                        self._ended = True
                        break
                    chunks.append(chunk)
                    if not incoming.pending and not sslobj.pending():
                        break
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:  # close_notify: nothing more to read
                self._ended = True
            if self._out.pending:  # post-handshake messages (a key update's answer)
                self._send_pending()
            if chunks:
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return b""

    def _send_pending(self) -> None:
        if self._sending:
            return  # the running send's next write takes them, in order
        try:
            self.inner.send_nowait(self._out.read())
        except OSError:
            pass

    def send(self, data: bytes | memoryview) -> None:
        if data:
            self._ssl.write(data)
        out = self._out.read()
        self._sending = True
        try:
            self.inner.send(out)
        finally:
            self._sending = False

    def send_nowait(self, data: bytes) -> bool:
        if data:
            self._ssl.write(data)
        return self.inner.send_nowait(self._out.read())

    def flush(self) -> None:
        self.inner.flush()

    def close_write(self) -> None:
        """close_notify, then the socket's half-close; reading goes on."""
        if self._shutdown():
            self.send(b"")
        self.inner.close_write()

    def _shutdown(self) -> bool:
        """Put a close_notify in the outgoing buffer; whether there is one."""
        if not self._done:
            return False
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # the peer's close_notify is not here yet: ours is written all the same
        except ssl.SSLError:
            return False
        return bool(self._out.pending)

    def close(self) -> None:
        if not self._sending and self._shutdown():
            try:
                self.inner.send_nowait(self._out.read())
            except OSError:
                pass
        self._done = False
        self.inner.close()

    def settimeout(self, seconds: float | None) -> None:
        self.inner.settimeout(seconds)
