"""The InfluxDB client libraries users already have write to strata."""

import urllib.parse
import urllib.request
import json

import pytest
from influxdb import InfluxDBClient
from influxdb.exceptions import InfluxDBClientError
from influxdb_client import InfluxDBClient as InfluxDBClientV2, Point, WritePrecision
from influxdb_client.client.exceptions import InfluxDBError
from influxdb_client.client.write_api import SYNCHRONOUS


def sql(strata, db, q):
    url = f"{strata.http_url}/api/v3/query_sql?" + urllib.parse.urlencode({"db": db, "q": q})
    with urllib.request.urlopen(url) as resp:
        return json.load(resp)


def test_influxdb_v1_client(strata):
    host, port = strata.http.rsplit(":", 1)
    client = InfluxDBClient(host=host, port=int(port), database="v1client")
    client.create_database("v1client")
    assert {"name": "v1client"} in client.get_list_database()
    points = [
        {
            "measurement": "cpu",
            "tags": {"host": f"h{i % 3}"},
            "time": 1451606400 + i,
            "fields": {"load": float(i) / 2, "procs": i},
        }
        for i in range(30)
    ]
    assert client.write_points(points, time_precision="s")
    rows = sql(strata, "v1client", "SELECT host, sum(procs) AS p FROM cpu GROUP BY host ORDER BY host")
    assert rows == [
        {"host": "h0", "p": sum(range(0, 30, 3))},
        {"host": "h1", "p": sum(range(1, 30, 3))},
        {"host": "h2", "p": sum(range(2, 30, 3))},
    ]
    with pytest.raises(InfluxDBClientError) as err:
        client.write_points(["cpu,host=x load=oops 1"], protocol="line")
    assert "line 1" in str(err.value)


def test_influxdb_v2_client(strata):
    with InfluxDBClientV2(url=strata.http_url, token="unused", org="any") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(
            bucket="v2client",
            record=[
                Point("mem").tag("host", "a").field("used", 10.5).time(1451606400000, WritePrecision.MS),
                Point("mem").tag("host", "b").field("used", 20.25).time(1451606401000, WritePrecision.MS),
            ],
            write_precision=WritePrecision.MS,
        )
        rows = sql(strata, "v2client", "SELECT host, used FROM mem ORDER BY host")
        assert rows == [{"host": "a", "used": 10.5}, {"host": "b", "used": 20.25}]
        with pytest.raises(InfluxDBError) as err:
            write.write(bucket="v2client", record="mem,host=c used=1.0\nmem,host=d used=", write_precision=WritePrecision.S)
        assert "line 2" in str(err.value)
        rows = sql(strata, "v2client", "SELECT count(*) AS n FROM mem")
        assert rows == [{"n": 3}]


def test_influxdb_v2_delete_api(strata):
    with InfluxDBClientV2(url=strata.http_url, token="unused", org="any") as client:
        write = client.write_api(write_options=SYNCHRONOUS)
        write.write(
            bucket="v2delete",
            record="cpu,host=a v=1 1451606400\ncpu,host=b v=2 1451606400\n"
            "cpu,host=a v=3 1451606460\nmem,host=a free=4 1451606400",
            write_precision=WritePrecision.S,
        )
        delete = client.delete_api()
        delete.delete(
            "2016-01-01T00:00:00Z",
            "2016-01-01T00:00:30Z",
            '_measurement="cpu" AND host="a"',
            bucket="v2delete",
            org="any",
        )
        rows = sql(strata, "v2delete", "SELECT host, v FROM cpu ORDER BY time, host")
        assert rows == [{"host": "b", "v": 2.0}, {"host": "a", "v": 3.0}]
        # Without _measurement every table of the bucket is covered.
        delete.delete("2016-01-01T00:00:00Z", "2016-01-02T00:00:00Z", 'host="a"', bucket="v2delete", org="any")
        assert sql(strata, "v2delete", "SELECT count(*) AS n FROM mem") == [{"n": 0}]
        assert sql(strata, "v2delete", "SELECT host FROM cpu") == [{"host": "b"}]
        with pytest.raises(InfluxDBError) as err:
            delete.delete("2016-01-01T00:00:00Z", "2016-01-02T00:00:00Z", '_measurement="cpu" AND v="2"',
                          bucket="v2delete", org="any")
        assert "'v' is a field" in str(err.value)
