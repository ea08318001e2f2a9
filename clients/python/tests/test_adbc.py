"""A few thousand TSBS-like rows written over /write come back exactly
through the ADBC Flight SQL driver: filters, time buckets, ORDER BY/LIMIT,
and metadata browsing."""

import datetime as dt
import urllib.request

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow as pa
import pytest

import tsbs_like as t

DB = "adbc"


@pytest.fixture(scope="module")
def loaded(strata):
    all_rows = list(t.rows())
    for i in range(0, len(all_rows), 1000):
        body = "\n".join(t.line(r) for r in all_rows[i : i + 1000]).encode()
        req = urllib.request.Request(
            f"{strata.http_url}/write?db={DB}&precision=s", data=body, method="POST"
        )
        with urllib.request.urlopen(req) as resp:
            assert resp.status == 204
    return all_rows


def connect(strata):
    return flightsql.connect(
        strata.flight_uri,
        db_kwargs={"adbc.flight.sql.rpc.call_header.database": DB},
        autocommit=True,
    )


def query(strata, sql):
    with connect(strata) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def test_count_and_exact_rows(strata, loaded):
    table = query(strata, "SELECT count(*) AS n FROM cpu")
    assert table.column("n").to_pylist() == [len(loaded)]

    table = query(
        strata,
        "SELECT hostname, time, usage_user, usage_system, usage_idle FROM cpu "
        "WHERE hostname = 'host_7' ORDER BY time",
    )
    expected = [r for r in loaded if r["hostname"] == "host_7"]
    assert table.num_rows == len(expected)
    assert table.column("usage_user").to_pylist() == [r["usage_user"] for r in expected]
    assert table.column("usage_idle").to_pylist() == [r["usage_idle"] for r in expected]
    times = table.column("time").to_pylist()
    assert times[0] == dt.datetime(2016, 1, 1, 0, 0, 0)
    assert [int(x.replace(tzinfo=dt.timezone.utc).timestamp()) for x in times] == [
        r["time_s"] for r in expected
    ]


def test_filters_on_time_and_tags(strata, loaded):
    lo, hi = t.START_S + 500, t.START_S + 1000
    table = query(
        strata,
        "SELECT count(*) AS n, sum(usage_system) AS s FROM cpu "
        "WHERE region IN ('region_1', 'region_2') "
        "AND time >= to_timestamp_seconds(1451606900) AND time < to_timestamp_seconds(1451607400)",
    )
    sel = [r for r in loaded if r["region"] in ("region_1", "region_2") and lo <= r["time_s"] < hi]
    assert table.column("n").to_pylist() == [len(sel)]
    assert table.column("s").to_pylist() == [sum(r["usage_system"] for r in sel)]


def test_time_bucketed_aggregates(strata, loaded):
    table = query(
        strata,
        "SELECT date_bin(INTERVAL '5 minutes', time) AS bucket, hostname, "
        "max(usage_user) AS mx, avg(usage_idle) AS av FROM cpu "
        "WHERE hostname IN ('host_0', 'host_19') GROUP BY bucket, hostname ORDER BY bucket, hostname",
    )
    groups = {}
    for r in loaded:
        if r["hostname"] not in ("host_0", "host_19"):
            continue
        bucket = (r["time_s"] - t.START_S) // 300 * 300 + t.START_S
        groups.setdefault((bucket, r["hostname"]), []).append(r)
    keys = sorted(groups)
    got = table.to_pylist()
    assert len(got) == len(keys)
    for row, key in zip(got, keys):
        rs = groups[key]
        assert int(row["bucket"].replace(tzinfo=dt.timezone.utc).timestamp()) == key[0]
        assert row["hostname"] == key[1]
        assert row["mx"] == max(r["usage_user"] for r in rs)
        assert row["av"] == pytest.approx(sum(r["usage_idle"] for r in rs) / len(rs))

    table = query(
        strata,
        "SELECT date_trunc('minute', time) AS m, count(*) AS n FROM cpu GROUP BY m ORDER BY m LIMIT 3",
    )
    assert table.column("n").to_pylist() == [6 * t.HOSTS] * 3


def test_order_by_limit(strata, loaded):
    table = query(
        strata,
        "SELECT hostname, usage_user, time FROM cpu "
        "ORDER BY usage_user DESC, time DESC, hostname ASC LIMIT 10",
    )
    expected = sorted(loaded, key=lambda r: (-r["usage_user"], -r["time_s"], r["hostname"]))[:10]
    assert table.column("hostname").to_pylist() == [r["hostname"] for r in expected]
    assert table.column("usage_user").to_pylist() == [r["usage_user"] for r in expected]


def test_metadata_browsing(strata, loaded):
    with connect(strata) as conn:
        objects = conn.adbc_get_objects(depth="tables").read_all().to_pylist()
        catalogs = {o["catalog_name"] for o in objects}
        assert "strata" in catalogs
        schemas = {
            s["db_schema_name"]: [tb["table_name"] for tb in (s["db_schema_tables"] or [])]
            for o in objects
            for s in (o["catalog_db_schemas"] or [])
        }
        assert "cpu" in schemas[DB]
        schema = conn.adbc_get_table_schema("cpu", catalog_filter="strata", db_schema_filter=DB)
        assert schema.field("usage_user").type == pa.int64()
        assert schema.field("hostname").type == pa.string()
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "strata"


def test_sql_errors_name_the_problem(strata, loaded):
    with connect(strata) as conn, conn.cursor() as cur:
        with pytest.raises(Exception, match="no_such_column"):
            cur.execute("SELECT no_such_column FROM cpu")
            cur.fetchall()


def test_insert_as_a_query_and_as_an_update(strata, loaded):
    with connect(strata) as conn, conn.cursor() as cur:
        cur.execute(
            "INSERT INTO ins (time, host, v) VALUES "
            "('2026-01-01T00:00:00Z', 'a', 1.5), ('2026-01-01T00:00:01Z', 'b', 2.5)"
        )
        assert cur.fetch_arrow_table().column("count").to_pylist() == [2]

        # DoPut with CommandStatementUpdate answers the rows written.
        cur.adbc_statement.set_sql_query(
            "INSERT INTO ins (time, host, v) SELECT time, hostname, usage_user FROM cpu "
            "WHERE hostname = 'host_3'"
        )
        written = cur.adbc_statement.execute_update()
        expected = [r for r in loaded if r["hostname"] == "host_3"]
        assert written == len(expected)

    table = query(strata, "SELECT count(*) AS n, sum(v) AS s FROM ins")
    assert table.column("n").to_pylist() == [2 + len(expected)]
    assert table.column("s").to_pylist() == [4.0 + sum(r["usage_user"] for r in expected)]
