"""Redis over TLS (``rediss://`` with ``INTERQ_REDIS_TLS_CA_FILE``) against a
real redis-server listening only on a TLS port, with a throwaway CA and a
server certificate for 127.0.0.1 made here: a job goes through the API and a
worker both talking TLS; a client without the CA, or with the wrong one, fails
at once with a certificate error."""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from jobs.dev.harness import Proc, Stack, free_port, redis_ready
from jobs.services import redis_client
from jobs.settings import ModelLimit, Settings
from tests.helpers import SimServer, job_body, running_worker, wait_terminal

pytestmark = pytest.mark.skipif(shutil.which("redis-server") is None, reason="no redis-server")


@dataclass
class Pki:
    ca: Path
    cert: Path
    key: Path
    other_ca: Path  # a CA that did not sign the server's certificate


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _server_cert(
    ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    san = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    return key, cert


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key, ca = _ca("interq test CA")
    key, cert = _server_cert(ca_key, ca)
    _, other = _ca("some other CA")
    out = Pki(d / "ca.pem", d / "server.pem", d / "server.key", d / "other-ca.pem")
    out.ca.write_bytes(_pem(ca))
    out.cert.write_bytes(_pem(cert))
    out.other_ca.write_bytes(_pem(other))
    out.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return out


def _tls_ready(ca: Path) -> Callable[[Proc], bool]:
    def ready(p: Proc) -> bool:
        return redis_ready(p, host="127.0.0.1", ssl=True, ssl_ca_certs=str(ca))

    return ready


@pytest.fixture(scope="module")
def tls_redis(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server with TLS only (``--port 0``); yields its rediss:// URL."""
    port = free_port()
    work = tmp_path_factory.mktemp("tls-redis")
    cmd = [shutil.which("redis-server") or "redis-server", "--port", "0"]
    cmd += ["--tls-port", str(port), "--bind", "127.0.0.1", "--dir", str(work), "--save", ""]
    cmd += ["--tls-cert-file", str(pki.cert), "--tls-key-file", str(pki.key)]
    cmd += ["--tls-ca-cert-file", str(pki.ca), "--tls-auth-clients", "no"]
    with Stack(work) as st:
        st.add("redis", cmd, {}, ready=_tls_ready(pki.ca), port=port)
        yield f"rediss://127.0.0.1:{port}/0"


@pytest.fixture()
def tls_settings(tls_redis: str, pki: Pki, settings: Settings) -> Settings:
    """The test settings, with Redis over TLS instead."""
    flush = redis.Redis.from_url(tls_redis, ssl_ca_certs=str(pki.ca))
    flush.flushdb()
    flush.close()
    return settings.model_copy(
        update={
            "redis_url": tls_redis,
            "redis_tls_ca_file": str(pki.ca),
            # an rpm budget: the rate limiter's own Redis connection is on TLS too
            "limits": {"*": ModelLimit(rpm=600, concurrency=10)},
        }
    )


async def test_a_job_completes_with_api_and_worker_on_tls(
    tls_settings: Settings, sim: SimServer
) -> None:
    from api import create_app

    app = create_app(tls_settings)
    async with app.router.lifespan_context(app), running_worker(tls_settings):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://interq") as api:
            ready = await api.get("/readyz")
            assert ready.status_code == 200, ready.text
            r = await api.post("/v1/jobs", json=job_body("over TLS"))
            assert r.status_code in (200, 201, 202), r.text
            jid = r.json()["id"]
            done = await wait_terminal(api, [jid])
    assert done[jid]["status"] == "completed", done[jid]


@pytest.mark.parametrize("ca", ["none", "other"])
async def test_a_client_without_the_right_ca_fails_at_once(
    tls_settings: Settings, pki: Pki, ca: str
) -> None:
    ca_file = None if ca == "none" else str(pki.other_ca)
    cfg = tls_settings.model_copy(update={"redis_tls_ca_file": ca_file})
    client = redis_client(cfg, retries=0, socket_timeout=5.0)
    try:
        with pytest.raises(redis.ConnectionError) as err:
            await client.ping()
    finally:
        await client.aclose()
    assert isinstance(err.value.__cause__ or err.value.__context__, ssl.SSLError) or (
        "CERTIFICATE_VERIFY_FAILED" in str(err.value)
    ), repr(err.value)
