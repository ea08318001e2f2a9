"""Authentication through the clients users run, against `strata dev
--auth`: good tokens are accepted, no token / a wrong one / a revoked one
are refused (401, Unauthenticated), a read-only token cannot write (403,
PermissionDenied), and /ping and /health stay open."""

import base64
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import adbc_driver_manager
import pyarrow.flight as flight
import pytest
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError
from influxdb_client import InfluxDBClient as InfluxDBClientV2
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS

from conftest import ADMIN_TOKEN, strata_bin

DB = "authdb"


def admin(s, *args):
    """Runs `strata admin ARGS` against the cluster with its secret."""
    out = subprocess.run(
        [strata_bin(), "admin", *args, "--catalog", s.catalog,
         "--cluster-secret-file", os.path.join(s.data_dir, "cluster-secret")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def create_token(s, name, *permissions):
    args = ["token", "create", "--name", name]
    for p in permissions:
        args += ["--permission", p]
    return admin(s, *args)


def http(s, path, token=None, data=None, scheme="Token"):
    req = urllib.request.Request(f"{s.http_url}{path}", data=data,
                                 method="POST" if data is not None else "GET")
    if token is not None:
        req.add_header("Authorization", f"{scheme} {token}")
    try:
        with urllib.request.urlopen(req) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def adbc(s, **db_kwargs):
    kwargs = {"adbc.flight.sql.rpc.call_header.database": DB, **db_kwargs}
    return flightsql.connect(s.flight_uri, db_kwargs=kwargs, autocommit=True)


def adbc_query(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


@pytest.fixture(scope="module")
def tokens(strata_auth):
    s = strata_auth
    status, body = http(s, f"/write?db={DB}&precision=s", ADMIN_TOKEN,
                        b"cpu,host=a usage=1 1451606400\ncpu,host=b usage=2 1451606400")
    assert status == 204, body
    return {
        "writer": create_token(s, "writer", f"{DB}:write"),
        "reader": create_token(s, "reader", f"{DB}:read"),
        "other": create_token(s, "other", "otherdb:admin"),
    }


def test_ping_and_health_need_no_token(strata_auth):
    assert http(strata_auth, "/ping")[0] == 204
    assert http(strata_auth, "/health")[0] == 200


def test_http_refuses_missing_and_wrong_tokens(strata_auth, tokens):
    s = strata_auth
    q = "/api/v3/query_sql?" + urllib.parse.urlencode({"db": DB, "q": "SELECT count(*) AS n FROM cpu"})
    status, body = http(s, q)
    assert status == 401 and '"code":"unauthenticated"' in body, body
    status, body = http(s, q, "strata_not-a-token")
    assert status == 401, body
    status, body = http(s, q, tokens["reader"])
    assert (status, body) == (200, '[{"n":2}]'), body
    assert http(s, q, tokens["reader"], scheme="Bearer")[0] == 200
    status, body = http(s, q, tokens["other"])
    assert status == 403 and "read permission on database 'authdb'" in body, body


def test_adbc_with_a_token_in_db_kwargs(strata_auth, tokens):
    with adbc(strata_auth, **{"adbc.flight.sql.authorization_header": f"Bearer {tokens['reader']}"}) as conn:
        assert adbc_query(conn, "SELECT count(*) AS n FROM cpu").column("n").to_pylist() == [2]
        # Reading is all the token may do.
        with pytest.raises(adbc_driver_manager.Error) as err:
            adbc_query(conn, "INSERT INTO cpu (time, host, usage) VALUES (1451606401000000000, 'c', 3.0)")
        assert "lacks write permission" in str(err.value)
        with pytest.raises(adbc_driver_manager.Error) as err:
            adbc_query(conn, "SELECT * FROM system.queries")
        assert "admin permission" in str(err.value)
    with adbc(strata_auth, **{"adbc.flight.sql.authorization_header": f"Bearer {tokens['writer']}"}) as conn:
        adbc_query(conn, "INSERT INTO cpu (time, host, usage) VALUES (1451606401000000000, 'c', 3.0)")
        assert adbc_query(conn, "SELECT count(*) AS n FROM cpu").column("n").to_pylist() == [3]


def test_adbc_refuses_missing_and_wrong_tokens(strata_auth, tokens):
    for kwargs in ({}, {"adbc.flight.sql.authorization_header": "Bearer strata_wrong"}):
        with pytest.raises(adbc_driver_manager.Error) as err:
            with adbc(strata_auth, **kwargs) as conn:
                adbc_query(conn, "SELECT 1")
        assert "UNAUTHENTICATED" in str(err.value).upper(), str(err.value)


def test_adbc_with_username_and_password(strata_auth, tokens):
    # The Flight handshake with Basic credentials (the token as password)
    # answers a bearer token the driver sends from then on.
    # User names of every length: the Go client's base64 is unpadded.
    for user in ("x", "xy", "xyz", "anyone"):
        with adbc(strata_auth, username=user, password=tokens["reader"]) as conn:
            assert adbc_query(conn, "SELECT count(*) AS n FROM cpu").column("n").to_pylist()[0] >= 2
    with pytest.raises(adbc_driver_manager.Error):
        with adbc(strata_auth, username="anyone", password="strata_wrong") as conn:
            adbc_query(conn, "SELECT 1")


def test_influxdb_v1_client_with_username_and_password(strata_auth, tokens):
    host, port = strata_auth.http.rsplit(":", 1)
    client = InfluxDBClient(host=host, port=int(port), username="me",
                            password=tokens["writer"], database=DB)
    assert client.write_points([{"measurement": "mem", "tags": {"host": "a"},
                                 "time": 1451606400, "fields": {"used": 1.5}}],
                               time_precision="s")
    assert {"name": DB} in client.get_list_database()
    wrong = InfluxDBClient(host=host, port=int(port), username="me",
                           password="strata_wrong", database=DB)
    with pytest.raises(InfluxDBClientError) as err:
        wrong.write_points([{"measurement": "mem", "fields": {"used": 1.0}}])
    assert err.value.code == 401
    reader = InfluxDBClient(host=host, port=int(port), username="me",
                            password=tokens["reader"], database=DB)
    with pytest.raises(InfluxDBClientError) as err:
        reader.write_points([{"measurement": "mem", "fields": {"used": 1.0}}])
    assert err.value.code == 403


def test_influxdb_v2_client_token_and_revocation(strata_auth, tokens):
    s = strata_auth
    temp = create_token(s, "temporary", f"{DB}:write")
    with InfluxDBClientV2(url=s.http_url, token=temp, org="any") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(bucket=DB, record="disk,host=a free=1i 1451606400000000000")
        admin(s, "token", "revoke", "--name", "temporary")
        with pytest.raises(InfluxDBError) as err:
            write.write(bucket=DB, record="disk,host=a free=2i 1451606401000000000")
        assert err.value.response.status == 401
    with InfluxDBClientV2(url=s.http_url, token=tokens["reader"], org="any") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        with pytest.raises(InfluxDBError) as err:
            write.write(bucket=DB, record="disk,host=a free=3i 1451606402000000000")
        assert err.value.response.status == 403
    q = "/api/v3/query_sql?" + urllib.parse.urlencode({"db": DB, "q": "SELECT free FROM disk"})
    assert http(s, q, ADMIN_TOKEN) == (200, '[{"free":1}]')


def test_token_list_shows_names_not_secrets(strata_auth, tokens):
    listing = admin(strata_auth, "token", "list")
    assert "reader" in listing and f"{DB}:read" in listing
    assert tokens["reader"] not in listing


def test_internal_ports_refuse_calls_without_the_cluster_secret(strata_auth):
    client = flight.FlightClient(f"grpc://{strata_auth.storage[0]}")
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.list_flights())
    # Nor does a client token open them.
    options = flight.FlightCallOptions(headers=[(b"authorization", f"Bearer {ADMIN_TOKEN}".encode())])
    with pytest.raises(flight.FlightUnauthenticatedError):
        list(client.list_flights(options=options))
    client.close()


def test_basic_auth_on_http(strata_auth, tokens):
    basic = base64.b64encode(f"user:{tokens['reader']}".encode()).decode()
    q = "/api/v3/query_sql?" + urllib.parse.urlencode({"db": DB, "q": "SELECT count(*) AS n FROM mem"})
    status, body = http(strata_auth, q, basic, scheme="Basic")
    assert status == 200, body


def test_databases_the_token_cannot_read_show_nothing(strata_auth, tokens):
    s = strata_auth
    for q in (
        "DESCRIBE authdb.cpu",
        "SELECT no_such_column FROM authdb.cpu",
        "SELECT * FROM authdb.no_such_table",
        "SELECT * FROM no_such_db.cpu",
    ):
        path = "/api/v3/query_sql?" + urllib.parse.urlencode({"q": q})
        status, body = http(s, path, tokens["other"])
        assert status == 403, (q, body)
        assert "usage" not in body and "host" not in body, (q, body)
    # A bare table name in a session without a database reads the
    # database named `public`: checked like any other.
    status, _ = http(s, "/write?db=public", ADMIN_TOKEN, b"payroll,emp=a salary=1 1")
    assert status == 204
    path = "/api/v3/query_sql?" + urllib.parse.urlencode({"q": "SELECT * FROM payroll"})
    status, body = http(s, path, tokens["reader"])
    assert status == 403 and "'public'" in body, body


def test_statements_cannot_raise_the_operators_limits(strata_auth, tokens):
    q = "/*+ strata.memory_limit_mib = 100000 */ SELECT 1 AS one"
    path = "/api/v3/query_sql?" + urllib.parse.urlencode({"db": DB, "q": q})
    status, body = http(strata_auth, path, tokens["reader"])
    assert status == 403 and "--query-memory-limit-mib" in body, body
    assert http(strata_auth, path, ADMIN_TOKEN) == (200, '[{"one":1}]')
    lower = "/*+ strata.memory_limit_mib = 64 */ SELECT 1 AS one"
    path = "/api/v3/query_sql?" + urllib.parse.urlencode({"db": DB, "q": lower})
    assert http(strata_auth, path, tokens["reader"]) == (200, '[{"one":1}]')


def test_a_revoked_admin_token_stays_revoked_after_a_restart():
    import tempfile

    from conftest import start_dev, stop

    token = "strata_restart-admin-token-0123456789"
    env = dict(os.environ, STRATA_ADMIN_TOKEN=token)
    with tempfile.TemporaryDirectory() as tmp:
        s = start_dev(tmp, ["--auth"], env=env)
        try:
            assert http(s, "/write?db=r", token, b"m v=1 1")[0] == 204
            admin(s, "token", "create", "--name", "ops", "--permission", "*:admin")
            admin(s, "token", "revoke", "--name", "admin")
            assert http(s, "/write?db=r", token, b"m v=1 1")[0] == 401
        finally:
            stop(s)
        s = start_dev(tmp, ["--auth"], env=env)
        try:
            assert http(s, "/write?db=r", token, b"m v=1 1")[0] == 401
        finally:
            stop(s)
