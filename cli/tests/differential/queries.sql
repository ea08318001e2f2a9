-- The differential corpus (cli/tests/differential.rs): each query runs on a
-- three-node cluster and on one local DataFusion context over the same rows.
-- Statements end with `;` at the end of a line. A query whose outermost
-- ORDER BY is total is compared in order; the rest as sorted rows.

-- fan-out: scans, filters on time, tags and fields, projections, limits
SELECT * FROM cpu WHERE host = 'h1' ORDER BY time;
SELECT host, time, usage_user FROM cpu WHERE usage_user > 50 ORDER BY host, time;
SELECT host, time FROM cpu WHERE host IN ('h1', 'h2') AND time >= '2026-11-30T03:00:00Z' AND time < '2026-11-30T05:00:00Z' ORDER BY host, time;
SELECT host, time FROM cpu WHERE (host = 'h1' OR host = 'h2') AND time >= '2026-11-30T03:00:00Z' AND time < '2026-11-30T05:00:00Z' ORDER BY host, time;
SELECT host, time, usage_user FROM cpu WHERE usage_user IS NULL;
SELECT host, time, usage_user FROM cpu WHERE usage_user IS NOT NULL AND usage_system < 3;
SELECT host, region, reqs FROM cpu WHERE reqs BETWEEN 300 AND 320;
SELECT host, time FROM cpu WHERE time = '2026-11-30T06:00:00Z';
SELECT host, time FROM cpu WHERE time > '2026-11-30T11:00:00Z' OR time < '2026-11-30T00:30:00Z';
SELECT host, status FROM cpu WHERE status = 'crit' AND ok;
SELECT host, status FROM cpu WHERE status LIKE 'w%' AND NOT ok;
SELECT host, time FROM cpu WHERE host <> 'h0' AND region = 'r0' AND usage_system > 10;
SELECT host, usage_user * 2 + usage_system AS score FROM cpu WHERE host = 'h4';
SELECT upper(host), length(status), abs(usage_system - 10) FROM cpu WHERE region = 'r2' AND time < '2026-11-30T02:00:00Z';
SELECT host, time FROM cpu WHERE host NOT IN ('h1', 'h2', 'h3', 'h4', 'h5', 'h6') AND time >= '2026-11-30T10:00:00Z';
SELECT count(*) FROM (SELECT * FROM cpu LIMIT 7);
SELECT host, time FROM cpu WHERE host = 'h3' AND time >= '2026-11-30T01:00:00Z' AND time < '2026-11-30T05:00:00Z' ORDER BY time;
SELECT host, time, usage_system FROM cpu WHERE time >= '2026-11-30T05:00:00Z' AND time < '2026-11-30T07:00:00Z';
SELECT DISTINCT host FROM cpu;
SELECT DISTINCT region, status FROM cpu;
SELECT DISTINCT host, region FROM cpu WHERE usage_user > 90;
SELECT host, CASE WHEN usage_user > 50 THEN 'high' WHEN usage_user IS NULL THEN 'none' ELSE 'low' END FROM cpu WHERE time < '2026-11-30T01:00:00Z';
SELECT host, coalesce(usage_user, -1) FROM cpu WHERE host = 'h0' ORDER BY time;
SELECT host, time FROM cpu WHERE date_part('hour', time) = 3 AND host = 'h2' ORDER BY time;
SELECT host, time FROM cpu WHERE time >= now() - INTERVAL '100000 days' AND host = 'h9' ORDER BY time LIMIT 3;

-- merge-sort and time-ordered: ORDER BY with and without LIMIT, ASC, DESC, NULLs
SELECT host, time, usage_user FROM cpu ORDER BY usage_user DESC NULLS LAST, host, time LIMIT 10;
SELECT host, time, usage_user FROM cpu ORDER BY usage_user ASC NULLS FIRST, host, time LIMIT 10;
SELECT host, time, usage_user FROM cpu ORDER BY usage_user NULLS FIRST, host DESC, time DESC LIMIT 15;
SELECT host, time FROM cpu ORDER BY time DESC, host LIMIT 5;
SELECT host, time FROM cpu ORDER BY time ASC, host LIMIT 5;
SELECT host, time FROM cpu ORDER BY time DESC, host DESC LIMIT 1;
SELECT host, time, usage_system FROM cpu WHERE host = 'h7' ORDER BY time DESC LIMIT 4;
SELECT host, time FROM cpu ORDER BY time DESC, host LIMIT 5 OFFSET 3;
SELECT host, time FROM cpu WHERE region = 'r1' ORDER BY time DESC, host LIMIT 12;
SELECT host, time FROM cpu WHERE time < '2026-11-30T03:00:00Z' ORDER BY time DESC, host LIMIT 4;
SELECT host, time FROM cpu ORDER BY time, host LIMIT 1000;
SELECT host, time, reqs FROM cpu ORDER BY reqs DESC, time LIMIT 3;
SELECT host, time, status FROM cpu ORDER BY status, host, time LIMIT 20;
SELECT host, time, usage_system FROM cpu WHERE usage_system > 11 ORDER BY usage_system DESC, host, time;
SELECT time, host FROM cpu ORDER BY time DESC, host LIMIT 30;
SELECT host, time FROM cpu ORDER BY host DESC, time DESC LIMIT 8;

-- fan-out-aggregate: every splittable aggregate, grouped and not
SELECT count(*), count(usage_user), sum(usage_user), min(usage_user), max(usage_user), avg(usage_user) FROM cpu;
SELECT stddev(usage_user), stddev_pop(usage_user), var_samp(usage_system), var_pop(usage_system) FROM cpu;
SELECT host, count(DISTINCT status), count(DISTINCT time) FROM cpu GROUP BY host;
SELECT count(DISTINCT host), count(DISTINCT region) FROM cpu WHERE usage_user > 20;
SELECT host, first_value(usage_user ORDER BY time), last_value(usage_user ORDER BY time) FROM cpu GROUP BY host;
SELECT region, first_value(host ORDER BY time, host), last_value(host ORDER BY time, host) FROM cpu GROUP BY region;
SELECT host, array_agg(usage_system ORDER BY time) FROM cpu WHERE time < '2026-11-30T02:00:00Z' GROUP BY host;
SELECT host, bool_and(ok), bool_or(ok), max(status), min(status) FROM cpu GROUP BY host;
SELECT region, median(usage_system), approx_distinct(status) FROM cpu GROUP BY region;
SELECT host, approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY usage_system) FROM cpu WHERE host IN ('h1', 'h2') GROUP BY host;
SELECT host, sum(reqs), min(time), max(time) FROM cpu GROUP BY host;
SELECT host, corr(usage_user, usage_system), covar_samp(usage_user, usage_system) FROM cpu GROUP BY host;
SELECT region, bit_and(reqs), bit_or(reqs), bit_xor(reqs) FROM cpu GROUP BY region;
SELECT host, count(*) FILTER (WHERE ok), sum(usage_user) FILTER (WHERE status = 'warn') FROM cpu GROUP BY host;
SELECT host, max(usage_user) - min(usage_user) AS spread FROM cpu GROUP BY host HAVING max(usage_user) > 90;
SELECT host, avg(usage_user) FROM cpu GROUP BY host HAVING count(*) > 70;
SELECT host, count(*) FROM cpu GROUP BY host ORDER BY count(*) DESC, host LIMIT 3;
SELECT host, max(usage_user) FROM cpu GROUP BY host ORDER BY host LIMIT 5;
SELECT region, host, count(*) FROM cpu GROUP BY region, host ORDER BY region, host;
SELECT status, count(*), avg(usage_system) FROM cpu GROUP BY status;
SELECT ok, count(*) FROM cpu GROUP BY ok;
SELECT count(*) FROM cpu WHERE host = 'h3';
SELECT count(*), max(time) FROM cpu WHERE time >= '2026-11-30T04:00:00Z' AND time < '2026-11-30T04:30:00Z';
SELECT max(usage_user) FROM cpu WHERE host = 'h5' AND time >= '2026-11-30T01:00:00Z' AND time < '2026-11-30T02:00:00Z';
SELECT grouping(host), host, count(*) FROM cpu GROUP BY ROLLUP (host);
SELECT region, status, count(*) FROM cpu GROUP BY CUBE (region, status);

-- time buckets: date_bin and date_trunc, with and without the host
SELECT date_bin(INTERVAL '1 hour', time) AS hour, max(usage_user) FROM cpu GROUP BY hour ORDER BY hour;
SELECT date_trunc('hour', time) AS hour, max(usage_user) FROM cpu GROUP BY hour ORDER BY hour;
SELECT host, date_bin(INTERVAL '1 hour', time) AS hour, max(usage_user) FROM cpu WHERE host IN ('h1', 'h2') GROUP BY host, hour ORDER BY host, hour;
SELECT host, date_trunc('hour', time) AS hour, avg(usage_system) FROM cpu GROUP BY host, hour ORDER BY host, hour;
SELECT date_bin(INTERVAL '30 minutes', time) AS t, region, count(*) FROM cpu GROUP BY t, region ORDER BY t, region;
SELECT date_bin(INTERVAL '2 hours', time, TIMESTAMP '2026-11-30T00:30:00Z') AS t, sum(reqs) FROM cpu GROUP BY t ORDER BY t;
SELECT date_trunc('minute', time) AS m, count(*) FROM cpu WHERE time < '2026-11-30T01:00:00Z' GROUP BY m ORDER BY m;
SELECT date_bin(INTERVAL '1 hour', time) AS hour, host, max(usage_user), max(usage_system) FROM cpu WHERE time >= '2026-11-30T02:00:00Z' AND time < '2026-11-30T06:00:00Z' GROUP BY hour, host ORDER BY hour, host;
SELECT extract(hour FROM time) AS h, count(*) FROM cpu GROUP BY h ORDER BY h;
SELECT date_bin(INTERVAL '1 hour', time) AS hour, max(usage_user) FROM cpu GROUP BY hour ORDER BY hour DESC LIMIT 3;
SELECT to_char(date_trunc('day', time), '%Y-%m-%d') AS d, count(*) FROM cpu GROUP BY d;

-- direct-shaped: one host, one hour
SELECT max(usage_user) FROM cpu WHERE host = 'h2' AND time >= '2026-11-30T07:00:00Z' AND time < '2026-11-30T08:00:00Z';
SELECT date_trunc('minute', time) AS m, max(usage_user) FROM cpu WHERE host = 'h2' AND time >= '2026-11-30T07:00:00Z' AND time < '2026-11-30T08:00:00Z' GROUP BY m ORDER BY m;
SELECT * FROM cpu WHERE time >= '2026-11-30T09:00:00Z' AND time < '2026-11-30T09:10:00Z' ORDER BY host;

-- lastpoint in its common forms
SELECT DISTINCT ON (host) host, time, usage_user FROM cpu ORDER BY host, time DESC;
SELECT c.host, c.time, c.usage_system FROM cpu c JOIN (SELECT host, max(time) AS t FROM cpu GROUP BY host) m ON c.host = m.host AND c.time = m.t ORDER BY c.host;
SELECT c.host, c.time, c.usage_user, m.t FROM cpu c JOIN (SELECT host, min(time) AS t FROM cpu WHERE time >= '2026-11-30T02:00:00Z' GROUP BY host) m ON c.time = m.t AND c.host = m.host WHERE c.time >= '2026-11-30T02:00:00Z' ORDER BY c.host;
SELECT c.host, c.region, c.usage_system FROM cpu c JOIN (SELECT host, region, max(time) AS t FROM cpu GROUP BY host, region) m ON c.host = m.host AND c.region = m.region AND c.time = m.t WHERE c.usage_system > 5 ORDER BY c.host;
SELECT c.host, c.time FROM cpu c JOIN (SELECT max(time) AS t FROM cpu) m ON c.time = m.t ORDER BY c.host;
SELECT c.host, c.time FROM cpu c JOIN (SELECT host, max(time) AS t FROM cpu WHERE usage_user > 50 GROUP BY host) m ON c.host = m.host AND c.time = m.t ORDER BY c.host;
SELECT host, last_value(usage_system ORDER BY time) FROM cpu GROUP BY host;
SELECT host, time, usage_system FROM (SELECT host, time, usage_system, row_number() OVER (PARTITION BY host ORDER BY time DESC) AS rn FROM cpu) WHERE rn = 1 ORDER BY host;
SELECT host, time, rn FROM (SELECT host, time, row_number() OVER (PARTITION BY host ORDER BY time DESC) AS rn FROM cpu) WHERE rn <= 3 ORDER BY host, rn;
SELECT host, time, usage_user FROM (SELECT host, time, usage_user, row_number() OVER (PARTITION BY host ORDER BY time) AS rn FROM cpu) WHERE rn < 3 AND usage_user IS NOT NULL ORDER BY host, time;
SELECT region, host, time FROM (SELECT region, host, time, row_number() OVER (PARTITION BY region ORDER BY time DESC, host) AS rn FROM cpu WHERE time < '2026-11-30T06:00:00Z') WHERE 2 >= rn ORDER BY region, time, host;
SELECT host, time, rn FROM (SELECT host, time, row_number() OVER (PARTITION BY host ORDER BY usage_system DESC, time) AS rn FROM cpu) WHERE rn = 2 ORDER BY host;

-- lastpoint from the last-value cache (and forms it must not answer)
SELECT DISTINCT ON (host) * FROM cpu ORDER BY host, time DESC;
SELECT DISTINCT ON (region) region, host, time, usage_system FROM cpu WHERE time >= '2026-11-30T05:00:00Z' ORDER BY region, time DESC, host;
SELECT host, last_value(usage_user ORDER BY time) AS u, last_value(status ORDER BY time) AS s, max(time) AS t FROM cpu GROUP BY host;
SELECT max(time) FROM cpu;
SELECT region, max(time) FROM cpu WHERE host IN ('h1', 'h3') OR time > '2026-11-30T10:00:00Z' GROUP BY region;
SELECT host, time, usage_system FROM cpu WHERE host = 'h3' ORDER BY time DESC LIMIT 1;
SELECT host, time, reqs FROM cpu WHERE region = 'r2' ORDER BY host DESC, time DESC LIMIT 1;
SELECT host, first_value(reqs ORDER BY time DESC) FROM cpu WHERE region = 'r1' GROUP BY host;
SELECT host, time FROM (SELECT host, time, rank() OVER (PARTITION BY host ORDER BY time DESC) AS r FROM cpu) WHERE r = 1 ORDER BY host;
SELECT DISTINCT ON (host) host, time, usage_user FROM cpu WHERE time < '2026-11-30T06:00:00Z' ORDER BY host, time DESC;
SELECT DISTINCT ON (host) host, time, usage_user FROM cpu WHERE usage_user IS NOT NULL ORDER BY host, time DESC;
SELECT host, last_value(usage_user IGNORE NULLS ORDER BY time) FROM cpu GROUP BY host;
SELECT host, max(time), min(time) FROM cpu GROUP BY host;
SELECT DISTINCT ON (host) host, usage_user * 2 AS u FROM cpu ORDER BY host, u DESC NULLS LAST;
SELECT DISTINCT ON (region, status) region, status, host, time FROM cpu WHERE time >= '2026-11-30T08:00:00Z' ORDER BY region, status, time DESC, host;

-- window functions
SELECT host, time, usage_system, sum(usage_system) OVER (PARTITION BY host ORDER BY time ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM cpu WHERE host IN ('h1', 'h8') ORDER BY host, time;
SELECT host, time, rank() OVER (PARTITION BY region ORDER BY usage_system DESC, host, time) AS r FROM cpu WHERE time < '2026-11-30T01:00:00Z' ORDER BY host, time;
SELECT host, time, lag(usage_user) OVER (PARTITION BY host ORDER BY time) FROM cpu WHERE host = 'h6' ORDER BY time;
SELECT host, time, usage_system - avg(usage_system) OVER (PARTITION BY host) FROM cpu WHERE host = 'h0' ORDER BY time;
SELECT host, count(*) OVER () FROM cpu WHERE host = 'h4' AND time < '2026-11-30T01:00:00Z';
SELECT host, time, ntile(4) OVER (ORDER BY time, host) FROM cpu WHERE time < '2026-11-30T00:30:00Z' ORDER BY time, host;
SELECT host, hour, mx, mx - lag(mx) OVER (PARTITION BY host ORDER BY hour) FROM (SELECT host, date_bin(INTERVAL '1 hour', time) AS hour, max(usage_user) AS mx FROM cpu GROUP BY host, hour) ORDER BY host, hour;

-- joins and self-joins (both sides get their own partial aggregates)
SELECT c.host, c.time, c.usage_user, m.used FROM cpu c JOIN mem m ON c.host = m.host AND c.time = m.time ORDER BY c.host, c.time;
SELECT c.host, count(*), max(m.used) FROM cpu c JOIN mem m ON c.host = m.host GROUP BY c.host;
SELECT a.host, a.mx, b.mn FROM (SELECT host, max(usage_user) AS mx FROM cpu GROUP BY host) a JOIN (SELECT host, min(usage_system) AS mn FROM cpu GROUP BY host) b ON a.host = b.host;
SELECT c.host, m.host FROM (SELECT DISTINCT host FROM cpu) c LEFT JOIN (SELECT DISTINCT host FROM mem WHERE used > 70) m ON c.host = m.host;
SELECT a.time, a.host, b.host FROM cpu a JOIN cpu b ON a.time = b.time AND a.region = b.region AND a.host < b.host WHERE a.time < '2026-11-30T00:20:00Z';
SELECT m.host, m.time, m.used FROM mem m WHERE m.host IN (SELECT host FROM cpu WHERE usage_user > 98);
SELECT m.host, m.time FROM mem m WHERE NOT EXISTS (SELECT 1 FROM cpu c WHERE c.host = m.host AND c.time = m.time AND c.usage_user > 50);
SELECT c.host, m.used FROM cpu c FULL OUTER JOIN mem m ON c.host = m.host AND c.time = m.time WHERE coalesce(c.time, m.time) < '2026-11-30T02:00:00Z';
SELECT r.region, count(*) FROM cpu c CROSS JOIN (SELECT 'r0' AS region UNION ALL SELECT 'r1') r WHERE c.region = r.region GROUP BY r.region;

-- subqueries and CTEs
SELECT host, usage_user FROM cpu WHERE usage_user > (SELECT avg(usage_user) FROM cpu) AND host = 'h1';
SELECT host, (SELECT max(used) FROM mem WHERE mem.host = cpu.host) AS mx FROM cpu WHERE time = '2026-11-30T03:00:00Z';
WITH hourly AS (SELECT host, date_bin(INTERVAL '1 hour', time) AS hour, avg(usage_user) AS u FROM cpu GROUP BY host, hour) SELECT host, max(u), min(u) FROM hourly GROUP BY host;
WITH hot AS (SELECT host FROM cpu GROUP BY host HAVING max(usage_user) > 95) SELECT cpu.host, count(*) FROM cpu JOIN hot ON cpu.host = hot.host GROUP BY cpu.host;
WITH a AS (SELECT host, count(*) AS n FROM cpu GROUP BY host), b AS (SELECT max(n) AS top FROM a) SELECT a.host FROM a, b WHERE a.n = b.top;
SELECT host FROM cpu WHERE region = 'r1' UNION SELECT host FROM mem WHERE used < 20;
SELECT host FROM cpu WHERE region = 'r1' INTERSECT SELECT host FROM mem;
SELECT host FROM cpu EXCEPT SELECT host FROM cpu WHERE usage_user > 99;
SELECT * FROM (SELECT host, count(*) AS n FROM cpu GROUP BY host) WHERE n > 10 ORDER BY host;
SELECT host, n FROM (SELECT host, count(*) AS n FROM cpu WHERE ok GROUP BY host ORDER BY n DESC, host LIMIT 4) ORDER BY host;
SELECT sum(n) FROM (SELECT host, count(*) AS n FROM cpu GROUP BY host);
SELECT count(*) FROM (SELECT DISTINCT host, date_trunc('hour', time) FROM cpu);

-- TSBS cpu-only shapes
SELECT date_trunc('minute', time) AS minute, max(usage_user) FROM cpu WHERE host IN ('h1', 'h3', 'h5', 'h7') AND time >= '2026-11-30T05:00:00Z' AND time < '2026-11-30T06:00:00Z' GROUP BY minute ORDER BY minute;
SELECT date_trunc('hour', time) AS hour, host, avg(usage_user), avg(usage_system) FROM cpu GROUP BY hour, host ORDER BY hour, host;
SELECT date_trunc('minute', time) AS minute, max(usage_user) FROM cpu WHERE time < '2026-11-30T08:00:00Z' GROUP BY minute ORDER BY minute DESC LIMIT 5;
SELECT * FROM cpu WHERE usage_user > 90 AND time >= '2026-11-30T02:00:00Z' AND time < '2026-11-30T10:00:00Z';
SELECT * FROM cpu WHERE usage_user > 90 AND host = 'h8';
SELECT host, max(usage_user), max(usage_system), max(reqs) FROM cpu WHERE time >= '2026-11-30T00:00:00Z' AND time < '2026-11-30T08:00:00Z' GROUP BY host;

-- time-ordered over an aggregate by a time bucket: groups read newest (or
-- oldest) first; buckets that straddle groups (2 hours over 1-hour groups,
-- an hour offset by 30 minutes) must not stop early
SELECT date_bin(INTERVAL '30 minutes', time) AS t, count(*) FROM cpu GROUP BY t ORDER BY t DESC LIMIT 3;
SELECT date_trunc('hour', time) AS h, max(usage_user) FROM cpu GROUP BY h ORDER BY h ASC LIMIT 2;
SELECT date_trunc('hour', time) AS h, host, avg(usage_user) FROM cpu GROUP BY h, host ORDER BY h DESC, host LIMIT 13;
SELECT date_bin(INTERVAL '1 hour', time) AS h, sum(reqs) FROM cpu GROUP BY h ORDER BY h DESC LIMIT 3 OFFSET 2;
SELECT date_bin(INTERVAL '10 minutes', time) AS t, max(usage_user) AS mx FROM cpu GROUP BY t HAVING max(usage_user) > 95 ORDER BY t DESC LIMIT 4;
SELECT date_bin(INTERVAL '2 hours', time) AS t, count(*) FROM cpu GROUP BY t ORDER BY t DESC LIMIT 2;
SELECT date_bin(INTERVAL '1 hour', time, TIMESTAMP '2026-11-30T00:30:00Z') AS t, sum(reqs) FROM cpu GROUP BY t ORDER BY t DESC LIMIT 2;
SELECT m, count(*) AS hosts FROM (SELECT date_trunc('minute', time) AS m, host, max(usage_user) AS mx FROM cpu GROUP BY m, host) GROUP BY m ORDER BY m DESC LIMIT 4;
SELECT max(usage_system) AS mx, date_trunc('hour', time) AS h FROM cpu WHERE host <> 'h3' GROUP BY h ORDER BY h LIMIT 3;
SELECT DISTINCT date_trunc('hour', time) AS h FROM cpu WHERE usage_user > 50 ORDER BY h DESC LIMIT 4;
SELECT date_trunc('day', time) AS d, count(*) FROM cpu GROUP BY d ORDER BY d DESC LIMIT 1;
