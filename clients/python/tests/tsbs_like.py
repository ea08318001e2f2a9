"""TSBS-like cpu rows whose values tests can recompute."""

START_S = 1451606400  # 2016-01-01T00:00:00Z
HOSTS = 20
STEPS = 200  # 10 s apart: 2000 s of data
INTERVAL_S = 10
FIELDS = ["usage_user", "usage_system", "usage_idle"]


def value(field, host, step):
    k = FIELDS.index(field) + 1
    return (host * 31 + step * 7 * k + k) % 100


def rows():
    for step in range(STEPS):
        for h in range(HOSTS):
            yield {
                "hostname": f"host_{h}",
                "region": f"region_{h % 4}",
                "time_s": START_S + step * INTERVAL_S,
                **{f: value(f, h, step) for f in FIELDS},
            }


def line(r):
    fields = ",".join(f"{f}={r[f]}i" for f in FIELDS)
    return f"cpu,hostname={r['hostname']},region={r['region']} {fields} {r['time_s']}"
