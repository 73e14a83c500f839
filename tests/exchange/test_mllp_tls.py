"""MLLP over TLS with client certificates: the certificate must belong to the sending facility (MSH-4)."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import socket
import ssl
import threading
import uuid

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smartcare.exchange.ingest import Hub
from smartcare.exchange.mllp_server import MllpServer
from tests.exchange.conftest import CR, FS, VT, adt, msa


def _cert(cn: str, issuer_key, issuer_name, *, ca: bool = False):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer_name or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                                        critical=False)
    cert = builder.sign(issuer_key or key, hashes.SHA256())
    return key, cert


def _write(tmp_path, name, key, cert) -> tuple[str, str]:
    key_path, cert_path = tmp_path / f"{name}.key", tmp_path / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(key_path), str(cert_path)


@pytest.fixture
def tls_server(tmp_path, seeded):
    ca_key, ca_cert = _cert("SmartCare test CA", None, None, ca=True)
    server_key, server_cert = _cert("localhost", ca_key, ca_cert.subject)
    ca_path = tmp_path / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    skey, scert = _write(tmp_path, "server", server_key, server_cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(scert, skey)
    context.load_verify_locations(str(ca_path))
    context.verify_mode = ssl.CERT_REQUIRED

    loop = asyncio.new_event_loop()
    hub = Hub()
    server = MllpServer(hub, host="127.0.0.1", port=0, tls=context)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def client_context(cn: str) -> ssl.SSLContext:
        key, cert = _cert(cn, ca_key, ca_cert.subject)
        ckey, ccert = _write(tmp_path, f"client-{uuid.uuid4().hex[:6]}", key, cert)
        ctx = ssl.create_default_context(cafile=str(ca_path))
        ctx.load_cert_chain(ccert, ckey)
        return ctx

    yield server.port, client_context
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
    asyncio.run_coroutine_threadsafe(hub.close(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


def _send(port: int, context: ssl.SSLContext, payload: bytes) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(VT + payload + FS + CR)
        data = b""
        while FS + CR not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.partition(FS + CR)[0].lstrip(VT).decode()


def test_client_certificate_must_match_the_sending_facility(tls_server, hospital, residents):
    port, client_context = tls_server
    facility = hospital[0]
    ok = _send(port, client_context(facility), adt(facility, f"TLS{uuid.uuid4().hex[:8]}", residents[11]).encode())
    assert msa(ok)[1] == "AA"
    other = _send(port, client_context("500101H999"), adt(facility, f"TLS{uuid.uuid4().hex[:8]}", residents[11]).encode())
    assert msa(other)[1] == "AR" and "certificate" in other


def test_client_without_certificate_is_refused(tls_server):
    port, _ = tls_server
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:  # with TLS 1.3 the server refuses after the client's side of the handshake: no ACK, closed socket
        answer = _send(port, context, b"MSH|^~\\&|X|Y|||20260101||ADT^A04|1|P|2.5\r")
    except (ssl.SSLError, OSError):
        answer = ""
    assert answer == ""
