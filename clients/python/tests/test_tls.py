"""TLS on the front doors: `strata dev --tls-cert --tls-key` with a
certificate from the test's own CA. HTTPS with the CA (as `curl --cacert`)
and ADBC over grpc+tls:// work; plaintext to either port fails cleanly and
the server goes on."""

import datetime as dt
import ipaddress
import json
import os
import ssl
import tempfile
import urllib.error
import urllib.parse
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import start_dev, stop

DB = "tlsdb"


def make_ca_and_leaf(directory):
    """A CA and a server certificate it signed for localhost and
    127.0.0.1, as PEM files; returns (ca, cert, key) paths."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "strata test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                          content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = [os.path.join(directory, n) for n in ("ca.pem", "cert.pem", "key.pem")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(leaf.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module")
def tls():
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = make_ca_and_leaf(tmp)
        s = start_dev(tmp, ["--tls-cert", cert, "--tls-key", key])
        try:
            yield s, ca
        finally:
            stop(s)


def https(s, ca, path, data=None):
    context = ssl.create_default_context(cafile=ca)
    req = urllib.request.Request(f"https://{s.http}{path}", data=data,
                                 method="POST" if data is not None else "GET")
    with urllib.request.urlopen(req, context=context, timeout=30) as resp:
        return resp.status, resp.read().decode()


def test_https_with_the_ca(tls):
    s, ca = tls
    assert https(s, ca, "/ping")[0] == 204
    status, _ = https(s, ca, f"/write?db={DB}&precision=s",
                      b"cpu,host=a usage=1 1451606400\ncpu,host=b usage=2 1451606400")
    assert status == 204
    q = "/api/v3/query_sql?" + urllib.parse.urlencode({"db": DB, "q": "SELECT sum(usage) AS s FROM cpu"})
    status, body = https(s, ca, q)
    assert (status, json.loads(body)) == (200, [{"s": 3.0}])


def test_https_without_the_ca_is_refused_by_the_client(tls):
    s, _ = tls
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(f"https://{s.http}/ping", context=ssl.create_default_context(), timeout=30)
    assert "CERTIFICATE_VERIFY_FAILED" in str(err.value)


def test_plain_http_to_the_tls_port_is_told_to_use_https(tls):
    s, ca = tls
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{s.http}/ping", timeout=30)
    assert err.value.code == 400
    assert "https://" in err.value.read().decode()
    assert https(s, ca, "/ping")[0] == 204


def test_adbc_over_grpc_tls_with_the_ca(tls):
    s, ca = tls
    with open(ca) as f:
        roots = f.read()
    kwargs = {
        "adbc.flight.sql.rpc.call_header.database": DB,
        "adbc.flight.sql.client_option.tls_root_certs": roots,
    }
    with flightsql.connect(f"grpc+tls://{s.flight}", db_kwargs=kwargs, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT host, usage FROM cpu ORDER BY host")
            assert cur.fetch_arrow_table().to_pylist() == [
                {"host": "a", "usage": 1.0},
                {"host": "b", "usage": 2.0},
            ]


def test_plaintext_grpc_to_the_tls_port_fails_cleanly(tls):
    s, ca = tls
    kwargs = {"adbc.flight.sql.rpc.call_header.database": DB,
              "adbc.flight.sql.rpc.timeout_seconds.query": "10"}
    with pytest.raises(adbc_driver_manager.Error):
        with flightsql.connect(f"grpc://{s.flight}", db_kwargs=kwargs, autocommit=True) as conn:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
                cur.fetch_arrow_table()
    # The server is still there for TLS clients.
    with open(ca) as f:
        roots = f.read()
    kwargs = {"adbc.flight.sql.rpc.call_header.database": DB,
              "adbc.flight.sql.client_option.tls_root_certs": roots}
    with flightsql.connect(f"grpc+tls://{s.flight}", db_kwargs=kwargs, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) AS n FROM cpu")
            assert cur.fetch_arrow_table().column("n").to_pylist() == [2]


@pytest.fixture(scope="module")
def cluster_tls():
    """`strata dev` whose catalog and storage nodes serve TLS too, the
    roles calling each other trusting the test CA."""
    with tempfile.TemporaryDirectory() as tmp:
        ca, cert, key = make_ca_and_leaf(tmp)
        s = start_dev(tmp, ["--tls-cert", cert, "--tls-key", key, "--cluster-tls-ca", ca])
        try:
            yield s, ca
        finally:
            stop(s)


def test_roles_talk_to_each_other_over_tls(cluster_tls):
    import pyarrow.flight as flight

    s, ca = cluster_tls
    status, _ = https(s, ca, "/write?db=inner&precision=s",
                      b"cpu,host=a usage=1 1451606400\ncpu,host=b usage=2 1451606400")
    assert status == 204
    q = "/api/v3/query_sql?" + urllib.parse.urlencode({"db": "inner", "q": "SELECT count(*) AS n FROM cpu"})
    assert https(s, ca, q) == (200, '[{"n":2}]')
    with open(ca, "rb") as f:
        roots = f.read()
    node = s.storage[0]
    # A storage node's port speaks TLS only.
    plain = flight.FlightClient(f"grpc://{node}")
    with pytest.raises(flight.FlightError):
        list(plain.list_flights(options=flight.FlightCallOptions(timeout=10)))
    plain.close()
    secure = flight.FlightClient(f"grpc+tls://{node}", tls_root_certs=roots)
    assert len(list(secure.list_flights())) >= 1
    secure.close()
    # Its /metrics too.
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(f"https://{node}/metrics", context=context, timeout=30) as resp:
        assert resp.status == 200
