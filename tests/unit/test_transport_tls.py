"""TLS on memory buffers over a socket pair: handshakes, verification, ALPN defaults,
certificates picked by name, half-close, and Go's answer to plain HTTP at a TLS port."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

import gevent
import pytest

from revproxy.config.model import CertificateConfig, TLSConfig
from revproxy.net.stream import SocketStream
from revproxy.transport.tls import GO_HTTP_TO_HTTPS, TLSLayer, TLSStream


def issue(directory: Path, names: list[str], ca=None) -> tuple[Path, Path, object]:
    """A certificate for ``names`` (signed by ``ca`` = (cert, key), else a new CA made here)
    as PEM files; gives (cert path, key path, (ca cert, ca key))."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    if ca is None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(1)
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                   .sign(ca_key, hashes.SHA256()))
        ca = (ca_cert, ca_key)
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    alt = [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n)
           for n in names]
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(alt), False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / f"{names[0]}.pem", directory / f"{names[0]}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    (directory / "ca.pem").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path, ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    cert, key, ca = issue(directory, ["a.test", "127.0.0.1"])
    other_cert, other_key, _ = issue(directory, ["b.test"], ca)
    return {"cert": str(cert), "key": str(key), "ca": str(directory / "ca.pem"),
            "other_cert": str(other_cert), "other_key": str(other_key)}


def served(pki, *more: CertificateConfig, alpn: tuple[str, ...] = ()) -> TLSConfig:
    return TLSConfig(alpn=alpn, certificates=(
        CertificateConfig(certificate_file=pki["cert"], key_file=pki["key"]), *more))


def trusting(pki, **options) -> TLSConfig:
    return TLSConfig(certificates=(CertificateConfig(certificate_file=pki["ca"],
                                                     usage="verify"),), **options)


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    yield SocketStream(a), SocketStream(b)
    a.close()
    b.close()


def connect(pair, server: TLSConfig, client: TLSConfig, host: str = "a.test",
            websocket: bool = False):
    client_end, server_end = pair
    task = gevent.spawn(TLSLayer(server, server=True, websocket=websocket).server, server_end,
                        ("1.2.3.4", 5))
    try:
        tls = TLSLayer(client, server=False, websocket=websocket).client(client_end, host, 443)
    except BaseException:
        client_end.close()  # as dial does: the server sees the end
        task.join(timeout=5)
        raise
    task.join(timeout=5)
    if not task.successful():
        raise task.exception
    return tls, task.value[0]


def test_data_both_ways_and_a_half_close(pair, pki):
    client, server = connect(pair, served(pki), trusting(pki, server_name="a.test"))
    assert isinstance(client, TLSStream)
    payload = bytes(range(256)) * 1000  # several records, more than a socket buffer
    sender = gevent.spawn(client.send, payload)
    received = b""
    while len(received) < len(payload):
        received += server.recv()
    sender.get(timeout=5)
    assert received == payload
    client.close_write()  # close_notify and FIN: the server sees the end...
    assert server.recv() == b""
    server.send(b"still talking")  # ...and can still answer
    assert client.recv() == b"still talking"


def test_the_dialed_name_or_address_is_verified(pair, pki):
    connect(pair, served(pki), trusting(pki), host="a.test")  # no serverName: the name dialed


def test_an_address_is_checked_against_the_certificate(pki):
    for host in ("127.0.0.1", "a.test"):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        connect((SocketStream(a), SocketStream(b)), served(pki), trusting(pki), host=host)
        a.close()
        b.close()


def test_a_wrong_name_fails_unless_insecure(pki):
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    with pytest.raises(ssl.SSLCertVerificationError):
        connect((SocketStream(a), SocketStream(b)), served(pki),
                trusting(pki, server_name="b.test"))
    a.close()
    b.close()
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    connect((SocketStream(a), SocketStream(b)), served(pki),
            TLSConfig(server_name="b.test", allow_insecure=True))
    a.close()
    b.close()


def test_an_untrusted_certificate_fails(pair, pki):
    with pytest.raises(ssl.SSLCertVerificationError):
        connect(pair, served(pki), TLSConfig(server_name="a.test", disable_system_root=True))


@pytest.mark.parametrize("websocket,alpn", [(False, "h2"), (True, "http/1.1")])
def test_alpn_defaults_as_v2ray(pair, pki, websocket, alpn):
    client, _ = connect(pair, served(pki), trusting(pki), websocket=websocket)
    assert client.alpn == alpn


def test_configured_alpn(pair, pki):
    client, _ = connect(pair, served(pki, alpn=("x-one", "h2")), trusting(pki, alpn=("x-one",)))
    assert client.alpn == "x-one"


def test_the_certificate_is_picked_by_the_name_asked(pki):
    other = CertificateConfig(certificate_file=pki["other_cert"], key_file=pki["other_key"])
    for name in ("b.test", "a.test"):
        a, b = socket.socketpair()
        a.setblocking(False)
        b.setblocking(False)
        connect((SocketStream(a), SocketStream(b)), served(pki, other),
                trusting(pki, server_name=name))
        a.close()
        b.close()


def test_inline_certificates(pair, pki):
    inline = TLSConfig(certificates=(CertificateConfig(
        certificate=Path(pki["cert"]).read_text(), key=Path(pki["key"]).read_text()),))
    connect(pair, inline, TLSConfig(server_name="a.test", certificates=(
        CertificateConfig(certificate=Path(pki["ca"]).read_text(), usage="verify"),)))


def test_a_server_needs_a_certificate_with_a_key(pki):
    with pytest.raises(OSError, match="no certificate"):
        TLSLayer(trusting(pki), server=True, websocket=False)


def test_plain_http_at_a_websocket_tls_port_gets_gos_answer(pair, pki):
    client_end, server_end = pair
    task = gevent.spawn(TLSLayer(served(pki), server=True, websocket=True).server, server_end,
                        ("1.2.3.4", 5))
    client_end.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
    task.join(timeout=5)
    assert isinstance(task.exception, ssl.SSLError)
    assert client_end.recv() == GO_HTTP_TO_HTTPS


def test_garbage_fails_the_handshake(pair, pki):
    client_end, server_end = pair
    client_end.send(b"\x16\x03\x01\x00\x05hello")
    with pytest.raises(ssl.SSLError):
        TLSLayer(served(pki), server=True, websocket=False).server(server_end, ("1.2.3.4", 5))
