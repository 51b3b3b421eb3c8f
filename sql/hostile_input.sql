-- Hostile input: every public function fed NULLs, empty strings, values at
-- and beyond the documented limits (msg_id and key 1024 bytes; consumer,
-- producer, topic and destination name 256 bytes; headers 4096 bytes as
-- stored; channel 63 bytes; idempotency keys 255 characters, their scopes
-- and recovery points 256 bytes, leases 1 day; http urls 2048 bytes),
-- deeply nested JSON, odd but valid UTF-8, hostile identifiers, and random
-- strings (deterministic: setseed).  Idempotency keys, eo.reconcile() (on
-- relations of every kind, as superuser and as a role that may read
-- little) and http destinations (urls, headers, secrets, numbers) get
-- sections of their own at the end.
--
-- hostile.try() runs one call in its own subtransaction and says "ok" (or,
-- when asked, "ok" and the call's value) or the SQLSTATE, followed by the
-- rows the call added or removed per table and the rows it updated.  A
-- call that fails must leave every table as it was: otherwise the outcome
-- reads "PARTIAL WRITE".  hostile.run() makes one call per input ($1 is
-- the input's value, $2 its JSON value for JSON inputs) and shows, per
-- distinct outcome, the inputs that gave it, in input order.
--
-- The relay is off (test/test.conf): eo.relay_run() routes what was
-- published, so NOTIFY gets the hostile topics and channels.  Every
-- destination retries after an hour, so nothing depends on timing.  The
-- server must survive it all (SELECT 1 at the end).
CREATE EXTENSION eo_processing;
-- The byte limits below count UTF-8 bytes.
SELECT getdatabaseencoding();
CREATE SCHEMA hostile;

----------------------------------------------------------------------
-- Inputs
----------------------------------------------------------------------
-- Text inputs (val), and JSON inputs (json, with is_json).
CREATE TABLE hostile.input (ord serial PRIMARY KEY, name text NOT NULL, val text,
                            is_json boolean NOT NULL DEFAULT false, json jsonb);
INSERT INTO hostile.input (name, val) VALUES
    ('null', NULL),
    ('empty', ''),
    ('space', ' '),
    ('plain', 'plain-1'),
    ('quotes', $q$it's "quoted"$q$),
    ('semicolon', $q$x'); DROP TABLE eo.inbox; --$q$),
    ('newlines', E'line1\nline2\r\n'),
    ('controls', E'\t' || chr(1) || chr(27) || chr(127)),
    ('dollars', '$$ $x$ $1 $'),
    ('backslashes', E'\\ \\n \\x00 \\\\'),
    ('percent', '% %s %I %L _ \_'),
    ('star', '*'),
    ('prefix', 'a.*'),
    ('stars', 'a*b*'),
    ('emoji', U&'\+01F984\+01F469\200D\+01F469\200D\+01F467\+01F3F3\FE0F\200D\+01F308'),
    ('combining', U&'e\0301\0301\0301a\0308'),
    ('nfc', U&'caf\00E9'),
    ('nfd', U&'cafe\0301'),
    ('rtl', U&'\202Eabc\202C \0645\0631\062D\0628\0627 \05E2\05D5\05DC\05DD'),
    ('zero_width', U&'a\200Bb\200C\200D\FEFFc\2060'),
    ('nonchars', U&'\FFFE\FFFF\+10FFFF'),
    ('63_bytes', repeat('c', 63)),
    ('64_bytes', repeat('c', 64)),
    ('256_bytes', repeat('n', 256)),
    ('257_bytes', repeat('n', 257)),
    ('256_bytes_2b', repeat(U&'\00E9', 128)),
    ('258_bytes_2b', repeat(U&'\00E9', 129)),
    ('256_bytes_4b', repeat(U&'\+01F984', 64)),
    ('1024_bytes', repeat('m', 1024)),
    ('1025_bytes', repeat('m', 1025)),
    ('1024_bytes_4b', repeat(U&'\+01F984', 256)),
    ('1028_bytes_4b', repeat(U&'\+01F984', 257)),
    ('1_MB', repeat('x', 1000000));

-- Random strings over a hostile alphabet, sized around the limits.
SELECT setseed(0.2024);
DO $$
DECLARE
    alphabet text[] := ARRAY['a', 'Z', '0', '.', '*', '''', '"', ';', '$', '\', '%', '_',
                             E'\n', E'\t', chr(1), ' ', U&'\00E9', U&'\0301', U&'\200B',
                             U&'\202E', U&'\05E9', U&'\+01F984', U&'\FEFF', '-'];
    sizes int[] := ARRAY[1, 7, 63, 64, 255, 256, 257, 1023, 1024, 1025];
    s text;
    target int;
BEGIN
    FOR i IN 1 .. 12 LOOP
        target := sizes[1 + floor(random() * array_length(sizes, 1))::int];
        s := '';
        WHILE octet_length(s) < target LOOP
            s := s || alphabet[1 + floor(random() * array_length(alphabet, 1))::int];
        END LOOP;
        INSERT INTO hostile.input (name, val)
        VALUES (format('random_%s_%s_bytes', i, octet_length(s)), s);
    END LOOP;
END $$;
SELECT ord, name, octet_length(val) AS bytes, char_length(val) AS chars
  FROM hostile.input ORDER BY ord;

INSERT INTO hostile.input (name, json, is_json) SELECT name, json, true FROM (VALUES
    ('null', NULL),
    ('json_null', 'null'),
    ('empty_object', '{}'),
    ('empty_array', '[]'),
    ('string', '"s"'),
    ('number', '1e308'),
    ('deep_array_5000', (repeat('[', 5000) || repeat(']', 5000))::jsonb),
    ('deep_object_5000', (repeat('{"a": ', 5000) || '"x"' || repeat('}', 5000))::jsonb),
    ('deep_in_object', ('{"h": ' || repeat('[', 5000) || '"v"' || repeat(']', 5000) || '}')::jsonb),
    ('hostile_strings', (SELECT jsonb_object_agg(name, val) FROM hostile.input
                          WHERE val IS NOT NULL AND octet_length(val) <= 4000)),
    ('hostile_keys', (SELECT jsonb_object_agg(val, 'v') FROM hostile.input
                       WHERE val IS NOT NULL AND octet_length(val) <= 300)),
    ('many_keys', (SELECT jsonb_object_agg('k' || g, 'v' || g) FROM generate_series(1, 10000) g)),
    ('1_MB', jsonb_build_object('x', repeat('x', 1000000)))) AS j(name, json);
-- Headers of exactly 4096 and 4097 bytes as stored.
INSERT INTO hostile.input (name, json, is_json)
SELECT 'headers_' || (4096 + d) || '_bytes',
       jsonb_build_object('h', repeat('x', 4096 + d - pg_column_size(jsonb_build_object('h', '')))),
       true
  FROM generate_series(0, 1) d;
-- (Sizes uncompressed, as the functions see them.)
SELECT name, pg_column_size(jsonb_strip_nulls(json)) AS bytes
  FROM hostile.input WHERE is_json ORDER BY ord;

----------------------------------------------------------------------
-- The harness
----------------------------------------------------------------------
-- Rows in every table of the extension.  SECURITY DEFINER, so that the
-- harness also runs as a role without rights on the tables.
CREATE FUNCTION hostile.counts() RETURNS bigint[]
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY[(SELECT count(*) FROM eo.inbox), (SELECT count(*) FROM eo.producer_seq),
                 (SELECT count(*) FROM eo.outbox), (SELECT count(*) FROM eo.message_log),
                 (SELECT count(*) FROM eo.outbox_key), (SELECT count(*) FROM eo.destination),
                 (SELECT count(*) FROM eo.subscription), (SELECT count(*) FROM eo.delivery),
                 (SELECT count(*) FROM eo.destination_stats), (SELECT count(*) FROM eo.http_attempt),
                 (SELECT count(*) FROM eo.idempotency_key)]
$$;

-- "table key version" of every row of the tables whose rows calls rewrite
-- in place (idempotency keys, destinations), to count the rows a call
-- updated without adding or removing any: an updated row is a new row
-- version, with the call's subtransaction as its xmin.
CREATE FUNCTION hostile.row_versions() RETURNS text[]
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT ARRAY(SELECT format('idempotency_key %s %s', md5(k.key || '/' || k.scope), k.xmin)
                   FROM eo.idempotency_key k
                 UNION ALL
                 SELECT format('destination %s %s', d.id, d.xmin) FROM eo.destination d)
$$;

-- One call in a subtransaction: 'ok' (with show, 'ok' and the call's
-- value as text) or the SQLSTATE, then the rows it added or removed per
-- table ("inbox+1"), and the rows it updated ("destination~1").
CREATE FUNCTION hostile.try(call text, t text, j jsonb DEFAULT NULL, show boolean DEFAULT false)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    tables text[] := ARRAY['inbox', 'producer_seq', 'outbox', 'message_log', 'outbox_key',
                           'destination', 'subscription', 'delivery', 'destination_stats',
                           'http_attempt', 'idempotency_key'];
    before bigint[] := hostile.counts();
    before_rows text[] := hostile.row_versions();
    after bigint[];
    failed boolean := false;
    outcome text;
    value text;
    changes text := '';
BEGIN
    BEGIN
        IF show THEN
            EXECUTE 'SELECT (' || call || ')::text' INTO value USING t, j;
            outcome := 'ok ' || coalesce(value, 'NULL');
        ELSE
            EXECUTE 'SELECT ' || call USING t, j;
            outcome := 'ok';
        END IF;
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
        failed := true;
    END;
    after := hostile.counts();
    FOR i IN 1 .. array_length(tables, 1) LOOP
        IF after[i] <> before[i] THEN
            changes := changes || format(' %s%s%s', tables[i],
                                         CASE WHEN after[i] > before[i] THEN '+' END,
                                         after[i] - before[i]);
        END IF;
    END LOOP;
    SELECT changes || coalesce(string_agg(format(' %s~%s', s.tab, s.n), '' ORDER BY s.tab), '')
      INTO changes
      FROM (SELECT split_part(b, ' ', 1) AS tab, count(*) AS n
              FROM unnest(before_rows) AS b
              JOIN unnest(hostile.row_versions()) AS a
                ON split_part(a, ' ', 1) = split_part(b, ' ', 1)
               AND split_part(a, ' ', 2) = split_part(b, ' ', 2) AND a <> b
             GROUP BY 1) AS s;
    IF failed AND changes <> '' THEN
        RETURN outcome || ' PARTIAL WRITE:' || changes;
    END IF;
    RETURN outcome || changes;
END $$;

-- One call per text input ($1) or, with json => true, per JSON input ($2,
-- with $1 the input's name); the inputs per distinct outcome, in lines of
-- at most 64 characters.  With show => true, outcomes show the call's value.
CREATE FUNCTION hostile.run(call text, json boolean DEFAULT false, show boolean DEFAULT false)
RETURNS TABLE (outcome text, inputs text)
LANGUAGE plpgsql AS $$
DECLARE
    names text[] := '{}';
    outcomes text[] := '{}';
    r record;
BEGIN
    FOR r IN SELECT i.name, i.val, i.json FROM hostile.input i
              WHERE i.is_json = run.json ORDER BY i.ord LOOP
        names := names || r.name;
        outcomes := outcomes || hostile.try(call, CASE WHEN json THEN r.name ELSE r.val END,
                                            r.json, show);
    END LOOP;
    RETURN QUERY
        SELECT u.o, rtrim(regexp_replace(string_agg(u.n, ' ' ORDER BY u.k) || ' ',
                                         '(.{1,64}) ', E'\\1\n', 'g'), E'\n')
          FROM unnest(names, outcomes) WITH ORDINALITY AS u(n, o, k)
         GROUP BY u.o
         ORDER BY min(u.k);
END $$;

-- A destination on a given channel that receives everything.
CREATE FUNCTION hostile.channel_destination(channel text) RETURNS void
LANGUAGE sql AS $$
    SELECT eo.create_destination('chan ' || md5(coalesce(channel, '')), 'notify',
                                 jsonb_build_object('channel', channel, 'retry_delays', '["1h"]'::jsonb));
    SELECT eo.subscribe('*', 'chan ' || md5(coalesce(channel, '')));
$$;

-- Every message goes to "all" (a plain channel) as well.
SELECT eo.create_destination('all', 'notify', '{"channel": "hostile_all", "retry_delays": ["1h"]}');
SELECT eo.subscribe('*', 'all');

----------------------------------------------------------------------
-- Numbers and intervals (the outbox is still empty)
----------------------------------------------------------------------
SELECT call, hostile.try(call, NULL) AS outcome FROM unnest(ARRAY[
    'eo.process_seq(''p'', NULL)',
    'eo.process_seq(''p'', -1)',
    'eo.process_seq(''p'', -9223372036854775807)',
    'eo.process_seq(''p'', 0)',
    'eo.process_seq(''p'', 0)',
    'eo.process_seq(''p'', 9223372036854775807)',
    'eo.process_seq(''p'', 9223372036854775807)',
    'eo.process_seq(''p'', 1)',
    'eo.process(''r1'', ''c'', NULL::interval)',
    'eo.process(''r2'', ''c'', interval ''0'')',
    'eo.process(''r3'', ''c'', interval ''-1 microsecond'')',
    'eo.process(''r4'', ''c'', interval ''1 microsecond'')',
    'eo.process(''r5'', ''c'', interval ''1 month -31 days'')',
    'eo.process(''r6'', ''c'', interval ''178000000 years'')',
    'eo.process(''r7'', ''c'', interval ''-178000000 years'')',
    'eo.process(''r8'', ''c'', NULL::text)',
    'eo.process(''r9'', ''c'', ''infinity'')',
    'eo.process(''r10'', ''c'', ''-infinity'')',
    'eo.process(''r11'', ''c'', ''Infinity'')',
    'eo.process(''r12'', ''c'', ''  infinity  '')',
    'eo.purge_expired(NULL)',
    'eo.purge_expired(-1)',
    'eo.purge_expired(0)',
    'eo.purge_expired(9223372036854775807)',
    'eo.purge_delivered(NULL)',
    'eo.purge_delivered(-1)',
    'eo.relay_run(NULL)',
    'eo.relay_run(0)',
    'eo.relay_run(-2147483648)',
    'eo.relay_run(1)',
    'eo.relay_run(2147483647)',
    'eo.message(NULL)',
    'eo.message(''00000000-0000-0000-0000-000000000000'')',
    'eo.drop_destination(''missing'', NULL)',
    'eo.redrive(''all'')'
]) AS call;

----------------------------------------------------------------------
-- The inbox
----------------------------------------------------------------------
SELECT * FROM hostile.run('eo.process($1)');
SELECT * FROM hostile.run('eo.process($1)');
SELECT * FROM hostile.run('eo.process(''by-consumer'', $1)');
SELECT * FROM hostile.run('eo.process($1, ''c2'', ''infinity'')');
SELECT * FROM hostile.run('eo.process(''retain'', ''c3'', $1)');
SELECT * FROM hostile.run('eo.process_seq($1, 1)');
SELECT * FROM hostile.run('eo.process_seq(''by-consumer'', 1, $1)');
SELECT * FROM hostile.run('eo.set_result($1, jsonb_build_object(''r'', $1))');
SELECT * FROM hostile.run('eo.set_result(''by-consumer'', ''{"r": 1}'', $1)');
SELECT * FROM hostile.run('eo.result($1) IS NOT DISTINCT FROM jsonb_build_object(''r'', $1)');
SELECT * FROM hostile.run('eo.result(''by-consumer'', $1)');
SELECT * FROM hostile.run('eo.process(''json'', $1)', json => true);
SELECT * FROM hostile.run('eo.set_result(''json'', $2, $1)', json => true);
SELECT * FROM hostile.run('eo.result(''json'', $1) IS NOT DISTINCT FROM $2', json => true);
-- Ids are compared byte for byte: the two spellings of "café" are two ids.
SELECT eo.process(U&'caf\00E9', 'nf') AS nfc_first, eo.process(U&'cafe\0301', 'nf') AS nfd_first;
SELECT * FROM hostile.run('eo.forget($1, ''c2'')');
SELECT * FROM hostile.run('eo.forget(''by-consumer'', $1)');
SELECT * FROM hostile.run('eo.forget($1, ''c2'')');
-- The inbox holds what the calls above reported, and answers for it.
SELECT consumer, count(*) AS records, count(result) AS results
  FROM eo.inbox GROUP BY consumer ORDER BY consumer COLLATE "C";
SELECT count(*) AS mismatches FROM eo.inbox
 WHERE consumer = 'default' AND eo.result(msg_id) IS DISTINCT FROM jsonb_build_object('r', msg_id);
-- r4 was retained for a microsecond: it has expired now.  A negative
-- max_rows is refused by the LIMIT inside eo.purge_expired() -- only when
-- there is something to purge (above, with nothing expired, it returned 0).
SELECT hostile.try('eo.purge_expired(-1)', NULL) AS negative_max_rows;
-- Every record deduplicates, but r4, which is taken over.
SELECT consumer, msg_id FROM eo.inbox WHERE eo.process(msg_id, consumer);

----------------------------------------------------------------------
-- Destinations and subscriptions
----------------------------------------------------------------------
SELECT * FROM hostile.run('eo.create_destination($1, ''notify'')');
SELECT * FROM hostile.run('eo.create_destination($1, ''notify'')');
SELECT * FROM hostile.run('eo.create_destination(''kind'', $1)');
SELECT * FROM hostile.run('hostile.channel_destination($1)');
SELECT * FROM hostile.run('eo.create_destination(''options '' || $1, ''notify'', $2)', json => true);
SELECT * FROM hostile.run('eo.check_destination_options(''notify'', $2)', json => true);
SELECT * FROM hostile.run('eo.alter_destination(''all'', $2)', json => true);
SELECT eo.alter_destination('all', '{"channel": "hostile_all", "retry_delays": ["1h"]}');
SELECT * FROM hostile.run('eo.alter_destination($1, ''{"retry_delays": ["1h"]}'')');
SELECT * FROM hostile.run('eo.subscribe(''*'', $1)');
SELECT * FROM hostile.run('eo.subscribe($1, ''all'')');
SELECT * FROM hostile.run('eo.subscribe($1 || ''*'', ''all'')');
-- Every destination is valid and has its statistics row.
SELECT count(*) AS destinations,
       count(*) FILTER (WHERE eo.check_destination_options(kind, options) IS NULL) AS invalid,
       count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM eo.destination_stats s
                                           WHERE s.destination_id = d.id)) AS without_stats
  FROM eo.destination d;

----------------------------------------------------------------------
-- Publishing, and the relay
----------------------------------------------------------------------
SELECT * FROM hostile.run('eo.publish($1, ''{}''::jsonb)');
SELECT * FROM hostile.run('eo.publish($1, ''text''::text)');
SELECT * FROM hostile.run('eo.publish(''payload'', $1)');
SELECT * FROM hostile.run('eo.publish(''payload'', $2)', json => true);
SELECT * FROM hostile.run('eo.publish(''headers'', ''{}''::jsonb, NULL, $2)', json => true);
SELECT * FROM hostile.run('eo.publish(''headers'', ''x''::text, ''k'', $2)', json => true);
SELECT * FROM hostile.run('eo.publish(''headers'', ''{}''::jsonb, NULL, jsonb_build_object($1, $1))');
-- Keyed messages on a topic too long for a channel: the destinations
-- without a channel fail them, which holds back the key.
SELECT * FROM hostile.run('eo.publish(''key.'' || repeat(''k'', 70), ''{}''::jsonb, $1)');
SELECT * FROM hostile.run('eo.publish(''key.'' || repeat(''k'', 70), ''t''::text, $1, ''{"h": "v"}'')');
SELECT count(*) AS messages, count(DISTINCT topic) AS topics, count(DISTINCT key) AS keys
  FROM eo.outbox;
-- Every message reads back as a whole envelope.
SELECT count(*) AS bad_envelopes FROM eo.outbox o
 WHERE eo.message(o.id) IS NULL
    OR eo.message(o.id)->>'topic' IS DISTINCT FROM o.topic
    OR eo.message(o.id)->>'key' IS DISTINCT FROM o.key
    OR eo.message(o.id)->'headers' IS DISTINCT FROM coalesce(o.headers, 'null')
    OR eo.message(o.id)->'payload' IS DISTINCT FROM
       coalesce(o.payload, to_jsonb(o.payload_text), 'null');
SELECT hostile.try('eo.relay_run(1000000)', NULL) AS first_routing;
-- More of the same keys: held behind the failed deliveries.
SELECT * FROM hostile.run('eo.publish(''key.'' || repeat(''k'', 70), ''{"second": true}''::jsonb, $1)');
SELECT hostile.try('eo.relay_run(1000000)', NULL) AS second_routing;
SELECT state, count(*) AS deliveries, count(DISTINCT key) AS keys,
       count(*) FILTER (WHERE last_error LIKE 'channel name too long%') AS channel_too_long
  FROM eo.delivery GROUP BY state ORDER BY state;
SELECT destination, delivered_total FROM eo.stats
 WHERE destination IN ('all', 'plain-1', 'chan ' || md5('plain-1'))
 ORDER BY destination COLLATE "C";
SELECT count(*) AS unrouted FROM eo.unrouted;
SELECT count(*) AS bad_envelopes FROM eo.message_log m
 WHERE eo.message(m.id) IS NULL
    OR eo.message(m.id)->>'topic' IS DISTINCT FROM m.topic
    OR eo.message(m.id)->>'key' IS DISTINCT FROM m.key;

----------------------------------------------------------------------
-- Taking it apart
----------------------------------------------------------------------
SELECT * FROM hostile.run('eo.unsubscribe($1, ''all'')');
SELECT * FROM hostile.run('eo.unsubscribe(''*'', $1)');
SELECT * FROM hostile.run('eo.redrive($1)');
SELECT * FROM hostile.run('eo.drop_destination($1)');
SELECT * FROM hostile.run('eo.drop_destination($1, true)');
SELECT * FROM hostile.run('eo.drop_destination(''chan '' || md5(coalesce($1, '''')), true)');
SELECT name FROM eo.destination ORDER BY name COLLATE "C";
-- No row refers to a destination or message that is gone.
SELECT (SELECT count(*) FROM eo.subscription s
         WHERE NOT EXISTS (SELECT 1 FROM eo.destination d WHERE d.id = s.destination_id)) AS orphan_subscriptions,
       (SELECT count(*) FROM eo.delivery x
         WHERE NOT EXISTS (SELECT 1 FROM eo.message_log m WHERE m.id = x.message_id)) AS orphan_deliveries,
       (SELECT count(*) FROM eo.outbox_key k
         WHERE NOT EXISTS (SELECT 1 FROM eo.outbox o WHERE o.key = k.key)
           AND NOT EXISTS (SELECT 1 FROM eo.message_log m WHERE m.key = k.key)) AS orphan_keys;

----------------------------------------------------------------------
-- Idempotency keys (keys: 1 to 255 characters; scopes and recovery
-- points: 1 to 256 bytes; leases: (0, 1 day])
----------------------------------------------------------------------
-- Every text input as a key: started, then in_progress (the lease is
-- live), IK001 with another request.
SELECT * FROM hostile.run('(eo.key_begin($1, ''{}'')).state', show => true);
SELECT * FROM hostile.run('(eo.key_begin($1, ''{}'')).state', show => true);
SELECT * FROM hostile.run('(eo.key_begin($1, ''{"other": true}'')).state', show => true);
-- ... and as its own recovery point (checked before the key), then
-- completed with a response naming it, which every retry gets back.
SELECT * FROM hostile.run('eo.key_checkpoint($1, $1)');
SELECT * FROM hostile.run('eo.key_complete($1, jsonb_build_object(''r'', $1))');
SELECT * FROM hostile.run('(eo.key_begin($1, ''{}'')).response = jsonb_build_object(''r'', $1)', show => true);
SELECT * FROM hostile.run('eo.key_checkpoint($1, ''late'')');
SELECT * FROM hostile.run('eo.key_release($1)');
-- Every text input as a scope: a key of its own in each.
SELECT * FROM hostile.run('(eo.key_begin(''scoped'', ''{}'', $1)).state', show => true);
SELECT * FROM hostile.run('eo.key_checkpoint(''scoped'', ''step'', $1)');
SELECT * FROM hostile.run('eo.key_release(''scoped'', $1)');
SELECT * FROM hostile.run('eo.key_release(''scoped'', $1)');
-- Every JSON input as a request, and as the response.  A request is
-- compared by its fingerprint: the same one is in_progress, any other
-- IK001.
SELECT * FROM hostile.run('(eo.key_begin(''req '' || $1, $2)).state', json => true, show => true);
SELECT * FROM hostile.run('(eo.key_begin(''req '' || $1, $2)).state', json => true, show => true);
SELECT * FROM hostile.run('(eo.key_begin(''req '' || $1, jsonb_build_array($2))).state', json => true, show => true);
SELECT * FROM hostile.run('eo.key_complete(''req '' || $1, $2)', json => true);
SELECT * FROM hostile.run('(eo.key_begin(''req '' || $1, $2)).response IS NOT DISTINCT FROM $2', json => true, show => true);
-- The keys the calls above reported, by state.
SELECT state, recovery_point, count(*) AS keys, count(DISTINCT scope) AS scopes,
       count(response) AS responses
  FROM eo.idempotency_key GROUP BY state, recovery_point ORDER BY state, recovery_point;

-- Leases, fences and max_rows.  hostile.fence(k) is the current fence of
-- key k.
SELECT state FROM eo.key_begin('fenced', '{}');
SELECT state FROM eo.key_begin('fenced-2', '{}');
CREATE FUNCTION hostile.fence(k text) RETURNS bigint
LANGUAGE sql AS $$ SELECT fence FROM eo.idempotency_key WHERE key = k AND scope = 'default' $$;
-- Leases: key lease-<n> begun with the n-th.
SELECT n, lease, hostile.try('(eo.key_begin($2->>0, ''{}'', ''default'', $1::interval)).state', lease,
                             jsonb_build_array('lease-' || n), show => true) AS outcome
  FROM unnest(ARRAY[NULL, '0', '-1 microsecond', '1 microsecond', '1 day', '24 hours 1 microsecond',
                    '1 mon -29 days', '-1 mon 31 days', '1 year -359 days', '1 mon -30 days',
                    '178000000 years', '-178000000 years', '-2147483648 months 2147483647 days'])
       WITH ORDINALITY AS u(lease, n)
 ORDER BY n;
-- Fences that are not the current one of key "fenced": lease lost, for
-- each of the holder's calls, and nothing changes.
SELECT fence, hostile.try(format('eo.key_checkpoint(''fenced'', ''b'', ''default'', %s)', fence), NULL) AS checkpoint,
       hostile.try(format('eo.key_complete(''fenced'', ''"r"'', ''default'', %s)', fence), NULL) AS complete,
       hostile.try(format('eo.key_release(''fenced'', ''default'', %s)', fence), NULL) AS release
  FROM unnest(ARRAY['-1', '0', '-9223372036854775808', '9223372036854775807',
                    'hostile.fence(''fenced'') - 1', 'hostile.fence(''fenced'') + 1',
                    'hostile.fence(''fenced-2'')']) WITH ORDINALITY AS u(fence, n)
 ORDER BY n;
-- No fence, the current fence, and max_rows.
SELECT call, hostile.try(call, NULL) AS outcome FROM unnest(ARRAY[
    'eo.key_checkpoint(''fenced'', ''a'', ''default'', NULL)',
    'eo.key_checkpoint(''fenced'', ''b'', ''default'', hostile.fence(''fenced''))',
    'eo.key_complete(''fenced'', NULL, ''default'', hostile.fence(''fenced''))',
    'eo.key_release(''fenced'', ''default'', NULL)',
    'eo.key_release(''fenced'', ''default'', NULL)',
    'eo.key_complete(''fenced-2'', ''"r"'', ''default'', hostile.fence(''fenced-2''))',
    'eo.key_release(''fenced-2'', ''default'', hostile.fence(''fenced-2''))',
    'eo.key_release(''fenced-2'', ''default'', NULL)',
    'eo.purge_keys(NULL)',
    'eo.purge_keys(0)',
    'eo.purge_keys(-1)',
    'eo.purge_keys(-9223372036854775808)',
    'eo.purge_keys(9223372036854775807)'
]) AS call;
-- A lease is a length of time: whatever the calendar (months of 28 to 31
-- days, daylight saving time), it ends that long after key_begin, as
-- the (0, 1 day] check counts it.
SELECT key, lease, extract(epoch FROM lease_expires_at - created_at) BETWEEN
                   extract(epoch FROM lease) AND extract(epoch FROM lease) + 60 AS lease_kept
  FROM eo.idempotency_key WHERE key LIKE 'lease-%' ORDER BY key COLLATE "C";
-- An expired lease (lease-4 held it for a microsecond) is taken over with
-- a larger fence.
SELECT hostile.fence('lease-4') AS f \gset
SELECT state, recovery_point, fence > :f AS larger_fence FROM eo.key_begin('lease-4', '{}');
-- Completed keys past the retention: a negative max_rows is refused
-- whether or not there is something to purge.
UPDATE eo.idempotency_key SET completed_at = now() - interval '2 days'
 WHERE key IN ('plain-1', 'quotes') AND scope = 'default';
SELECT call, hostile.try(call, NULL, show => true) AS outcome FROM unnest(ARRAY[
    'eo.purge_keys(-1)',
    'eo.purge_keys(0)',
    'eo.purge_keys(1)',
    'eo.purge_keys(NULL)',
    'eo.purge_keys(NULL)'
]) AS call;

----------------------------------------------------------------------
-- Reconciliation: hostile relations, key columns and compare columns
----------------------------------------------------------------------
-- Two tables with a column named after every text input that can name
-- one (1 to 63 bytes); "local" holds the keys 1, 2, 2 and "remote" 2, 3
-- in every column: three problems whatever the key column.
DO $$
DECLARE
    cols text;
BEGIN
    SELECT string_agg(format('%I text', val), ', ' ORDER BY ord) INTO cols
      FROM hostile.input WHERE NOT is_json AND octet_length(val) BETWEEN 1 AND 63;
    EXECUTE format('CREATE TABLE hostile.rec_l (%s)', cols);
    EXECUTE format('CREATE TABLE hostile.rec_r (%s)', cols);
    SELECT string_agg('$1', ', ') INTO cols
      FROM hostile.input WHERE NOT is_json AND octet_length(val) BETWEEN 1 AND 63;
    EXECUTE format('INSERT INTO hostile.rec_l VALUES (%s)', cols) USING '1';
    EXECUTE format('INSERT INTO hostile.rec_l VALUES (%s)', cols) USING '2';
    EXECUTE format('INSERT INTO hostile.rec_l VALUES (%s)', cols) USING '2';
    EXECUTE format('INSERT INTO hostile.rec_r VALUES (%s)', cols) USING '2';
    EXECUTE format('INSERT INTO hostile.rec_r VALUES (%s)', cols) USING '3';
END $$;
SELECT * FROM hostile.run('(SELECT count(*) FROM eo.reconcile(''hostile.rec_l'', ''hostile.rec_r'', $1))', show => true);
SELECT * FROM hostile.run('(SELECT string_agg(problem, '' '') FROM eo.reconcile(''hostile.rec_l'', ''hostile.rec_r'', ''plain-1'', ARRAY[$1]))', show => true);
-- A table named after every such input, with the key 1, against a table
-- with the key 2.
CREATE SCHEMA hostile_names;
CREATE TABLE hostile.k2 (k text);
INSERT INTO hostile.k2 VALUES ('2');
DO $$
DECLARE
    name text;
BEGIN
    FOR name IN SELECT val FROM hostile.input WHERE NOT is_json AND octet_length(val) BETWEEN 1 AND 63 LOOP
        EXECUTE format('CREATE TABLE hostile_names.%I (k text)', name);
        EXECUTE format('INSERT INTO hostile_names.%I VALUES (''1'')', name);
    END LOOP;
END $$;
SELECT * FROM hostile.run('(SELECT string_agg(problem, '' '') FROM eo.reconcile(format(''hostile_names.%I'', $1)::regclass, ''hostile.k2'', ''k''))', show => true);

-- Relations of every kind, and odd arguments.
CREATE FUNCTION hostile.rec_count(l regclass, r regclass, k text, c text[] DEFAULT NULL)
RETURNS bigint LANGUAGE sql AS $$ SELECT count(*) FROM eo.reconcile(l, r, k, c) $$;
CREATE VIEW hostile.rec_v AS SELECT * FROM hostile.k2;
CREATE MATERIALIZED VIEW hostile.rec_m AS SELECT * FROM hostile.k2;
CREATE TABLE hostile.rec_p (k text) PARTITION BY LIST (k);
CREATE TABLE hostile.rec_p2 PARTITION OF hostile.rec_p FOR VALUES IN ('2');
INSERT INTO hostile.rec_p VALUES ('2');
CREATE SEQUENCE hostile.rec_s;
CREATE INDEX rec_i ON hostile.k2 (k);
CREATE TYPE hostile.rec_t AS (k text);
CREATE TABLE hostile.rec_nocols ();
CREATE TABLE hostile.rec_dropped (x int, k text, y json, z int);
ALTER TABLE hostile.rec_dropped DROP COLUMN x, DROP COLUMN z;
INSERT INTO hostile.rec_dropped VALUES ('2', '{"a": 1}');
CREATE TABLE hostile.rec_long (ccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc text);
-- Each kind of relation as "local", against hostile.k2 (key k); a
-- relation given by a number is an OID.
SELECT rel, hostile.try('hostile.rec_count($1::regclass, ''hostile.k2'', ''k'')', rel, show => true) AS outcome
  FROM unnest(ARRAY[NULL, '0', '4294967295', 'hostile.missing', 'hostile.rec_v', 'hostile.rec_m',
                    'hostile.rec_p', 'hostile.rec_p2', 'hostile.rec_dropped', 'hostile.rec_s',
                    'hostile.rec_i', 'hostile.rec_t', 'hostile.rec_nocols']) WITH ORDINALITY AS u(rel, n)
 ORDER BY n;
-- Key columns of hostile.k2 against itself.
SELECT key_column, hostile.try('hostile.rec_count(''hostile.k2'', ''hostile.k2'', $1)', key_column, show => true) AS outcome
  FROM unnest(ARRAY[NULL, '', 'K', '"k"', 'k ', ' k', 'ctid', 'tableoid', 'k']) WITH ORDINALITY AS u(key_column, n)
 ORDER BY n;
-- compare_columns of rec_l against rec_r (key plain-1), as array literals.
SELECT columns, hostile.try('hostile.rec_count(''hostile.rec_l'', ''hostile.rec_r'', ''plain-1'', $1::text[])',
                            columns, show => true) AS outcome
  FROM unnest(ARRAY[NULL, '{}', '{NULL}', '{*,NULL}', '{*,*,a.*}', '{plain-1}', '{nope}',
                    '[0:1]={*,a.*}', '{{*},{a.*}}']) WITH ORDINALITY AS u(columns, n)
 ORDER BY n;
-- The rest: a NULL remote, the TOAST table of rec_l, catalogs, identifiers
-- at and beyond 63 bytes, huge compare_columns.
SELECT call, hostile.try(call, NULL, show => true) AS outcome FROM unnest(ARRAY[
    'hostile.rec_count(''hostile.k2'', NULL, ''k'')',
    'hostile.rec_count((SELECT reltoastrelid FROM pg_class WHERE oid = ''hostile.rec_l''::regclass)::regclass, ''hostile.k2'', ''k'')',
    'hostile.rec_count(''hostile.rec_dropped'', ''hostile.rec_dropped'', ''k'')',
    'hostile.rec_count(''pg_class'', ''pg_class'', ''oid'')',
    'hostile.rec_count(''pg_class'', ''pg_attribute'', ''oid'')',
    'hostile.rec_count(''pg_authid'', ''pg_authid'', ''oid'', ''{rolname}'')',
    'hostile.rec_count(''pg_statistic'', ''pg_statistic'', ''starelid'') >= 0',
    'hostile.rec_count(''eo.idempotency_key'', ''eo.idempotency_key'', ''key'') >= 0',
    'hostile.rec_count(''hostile.rec_long'', ''hostile.rec_long'', repeat(''c'', 63))',
    'hostile.rec_count(''hostile.rec_long'', ''hostile.rec_long'', repeat(''c'', 64))',
    'hostile.rec_count(''hostile.rec_l'', ''hostile.rec_r'', ''plain-1'', ARRAY[repeat(''x'', 1000000)])',
    'hostile.rec_count(''hostile.rec_l'', ''hostile.rec_r'', ''plain-1'', array_fill(''*''::text, ARRAY[100000]))',
    'hostile.rec_count(''hostile.rec_l'', ''hostile.rec_r'', ''plain-1'', ARRAY(SELECT ''c'' || g FROM generate_series(1, 100000) g))'
]) AS call;

-- As a role with EXECUTE on eo.reconcile() and nothing else: what it may
-- not read is refused (42501), whatever the relation.
CREATE ROLE regress_hostile_analyst;
GRANT USAGE ON SCHEMA eo, hostile TO regress_hostile_analyst;
GRANT EXECUTE ON FUNCTION eo.reconcile(regclass, regclass, text, text[]) TO regress_hostile_analyst;
GRANT SELECT ON hostile.k2, hostile.rec_v TO regress_hostile_analyst;
GRANT SELECT (k) ON hostile.rec_dropped TO regress_hostile_analyst;
SET ROLE regress_hostile_analyst;
SELECT call, hostile.try(call, NULL, show => true) AS outcome FROM unnest(ARRAY[
    'hostile.rec_count(''hostile.k2'', ''hostile.rec_v'', ''k'')',
    'hostile.rec_count(''hostile.k2'', ''hostile.rec_m'', ''k'')',
    'hostile.rec_count(''hostile.k2'', ''hostile.rec_dropped'', ''k'', ''{}'')',
    'hostile.rec_count(''pg_class'', ''pg_class'', ''oid'')'
]) AS call;
-- Each relation against itself, on a key column it has.
SELECT rel, hostile.try('hostile.rec_count($2->>0, $2->>0, $2->>1)', NULL, to_jsonb(ARRAY[rel, key_column]), show => true) AS outcome
  FROM (VALUES (1, 'pg_authid', 'oid'), (2, 'pg_statistic', 'starelid'), (3, 'eo.idempotency_key', 'key'),
               (4, 'eo.inbox', 'msg_id'), (5, 'eo.destinations', 'name'), (6, 'eo.http_attempt', 'message_id'))
       AS v(n, rel, key_column)
 ORDER BY n;
RESET ROLE;
REVOKE ALL ON SCHEMA eo, hostile FROM regress_hostile_analyst;
REVOKE ALL ON FUNCTION eo.reconcile(regclass, regclass, text, text[]) FROM regress_hostile_analyst;
REVOKE ALL ON hostile.k2, hostile.rec_v, hostile.rec_dropped FROM regress_hostile_analyst;
DROP ROLE regress_hostile_analyst;

----------------------------------------------------------------------
-- Destinations of kind http: hostile options
----------------------------------------------------------------------
-- Every text input as the url, as part of it, as a header name and value,
-- and as a signing secret: checked without writing anything.
SELECT * FROM hostile.run('eo.check_destination_options(''http'', jsonb_build_object(''url'', $1))');
SELECT * FROM hostile.run('eo.check_destination_options(''http'', jsonb_build_object(''url'', ''http://example.com/'' || $1))');
SELECT * FROM hostile.run('eo.check_destination_options(''http'', jsonb_build_object(''url'', ''http://'' || $1 || ''/''))');
SELECT * FROM hostile.run('eo.check_destination_options(''http'', jsonb_build_object(''url'', ''http://example.com/'', ''headers'', jsonb_build_object($1, ''v'')))');
SELECT * FROM hostile.run('eo.check_destination_options(''http'', jsonb_build_object(''url'', ''http://example.com/'', ''headers'', jsonb_build_object(''X-H'', $1)))');
SELECT * FROM hostile.run('eo.check_destination_options(''http'', jsonb_build_object(''url'', ''http://example.com/'', ''signing_secret'', $1))');
-- Every JSON input as the options, and as the value of each option.
SELECT * FROM hostile.run('eo.check_destination_options(''http'', $2)', json => true);
SELECT o AS option, r.*
  FROM unnest(ARRAY['url', 'headers', 'signing_secret', 'timeout_ms', 'concurrency', 'tls_verify',
                    'max_attempts', 'retry_delays']) WITH ORDINALITY AS u(o, n),
       hostile.run(format('eo.check_destination_options(''http'', jsonb_build_object(''url'', ''http://example.com/'', %L, $2))', o),
                   json => true) AS r
 ORDER BY n;

-- Option sets, each checked, used to create a destination ("probe <n>")
-- and to alter one ("hooks"): the three agree, and a refused one writes
-- nothing.  The options of "hooks" must then be those of the last
-- accepted set.
SELECT eo.create_destination('hooks', 'http', '{"url": "http://example.com/hooks"}');
CREATE TABLE hostile.http_case (n serial PRIMARY KEY, label text NOT NULL, options jsonb);
CREATE FUNCTION hostile.add_http_case(label text, options jsonb) RETURNS void
LANGUAGE sql AS $$ INSERT INTO hostile.http_case (label, options) VALUES (label, options) $$;
CREATE FUNCTION hostile.secret(bytes int) RETURNS text
LANGUAGE sql AS $$ SELECT 'whsec_' || translate(encode(decode(repeat('5a', bytes), 'hex'), 'base64'), E'\n', '') $$;
-- URLs.
SELECT hostile.add_http_case(label, jsonb_build_object('url', url)) FROM (VALUES
    ('CR LF in path', E'http://example.com/a\r\nHost: evil.example'),
    ('LF at end', E'http://example.com/\n'),
    ('tab in path', E'http://example.com/a\tb'),
    ('DEL in path', E'http://example.com/a' || chr(127)),
    ('leading space', ' http://example.com/'),
    ('trailing space', 'http://example.com/ '),
    ('space in host', 'http://exa mple.com/'),
    ('space in path', 'http://example.com/a b'),
    ('space in query', 'http://example.com/?q=a b'),
    ('encoded CR LF', 'http://example.com/a%0d%0aHost:%20evil'),
    ('encoded NUL', 'http://example.com/a%00b'),
    ('unicode host', U&'http://b\00FCcher.example/'),
    ('punycode host', 'http://xn--bcher-kva.example/'),
    ('unicode host, CJK', U&'http://\4F8B\3048.\30C6\30B9\30C8/'),
    ('unicode path', U&'http://example.com/caf\00E9'),
    ('RTL override in host', U&'http://exa\202Eelpm.com/'),
    ('zero width in host', U&'http://exa\200Bmple.com/'),
    ('IPv6 loopback', 'http://[::1]:8080/x'),
    ('IPv6 unspecified', 'http://[::]/'),
    ('IPv6 v4-mapped', 'http://[::ffff:127.0.0.1]/'),
    ('IPv6 zone id', 'http://[fe80::1%25eth0]/'),
    ('IPv6 unclosed', 'http://[::1/'),
    ('IPv6 without brackets', 'http://::1/'),
    ('IPvFuture', 'http://[v1.x]/'),
    ('IPv4 as a number', 'http://2130706433/'),
    ('IPv4 in hex', 'http://0x7f.1/'),
    ('IPv4 short', 'http://127.1/'),
    ('IPv4 link-local', 'http://169.254.169.254/latest/meta-data/'),
    ('trailing dot', 'http://example.com./'),
    ('port 0', 'http://example.com:0/'),
    ('port 65535', 'http://example.com:65535/'),
    ('port 65536', 'http://example.com:65536/'),
    ('port negative', 'http://example.com:-1/'),
    ('port empty', 'http://example.com:/'),
    ('upper-case scheme', 'HTTPS://EXAMPLE.COM/'),
    ('no path', 'https://example.com'),
    ('fragment', 'http://example.com/#frag'),
    ('no slashes', 'http:example.com'),
    ('one slash', 'http:/example.com'),
    ('no scheme', '//example.com/'),
    ('bare host', 'example.com'),
    ('no host', 'http://'),
    ('empty host', 'http:///x'),
    ('backslashes', E'http:\\\\example.com\\'),
    ('file', 'file:///etc/passwd'),
    ('gopher', 'gopher://example.com:70/_GET%20/'),
    ('ftp', 'ftp://example.com/'),
    ('dict', 'dict://example.com:11211/stat'),
    ('ldap', 'ldap://example.com/'),
    ('ws', 'ws://example.com/'),
    ('javascript', 'javascript:alert(1)'),
    ('data', 'data:text/plain,x'),
    ('user', 'http://user@example.com/'),
    ('user and password', 'http://user:pw@example.com/'),
    ('password only', 'http://:pw@example.com/'),
    ('empty userinfo', 'http://@example.com/'),
    ('user, empty password', 'http://user:@example.com/'),
    ('two @', 'http://a@b@example.com/'),
    ('host@host', 'http://example.com@evil.example/'),
    ('encoded @', 'http://example.com%40evil.example/'),
    ('2048 bytes', 'http://example.com/' || repeat('a', 2048 - 19)),
    ('2049 bytes', 'http://example.com/' || repeat('a', 2049 - 19)),
    ('1 MB', 'http://example.com/' || repeat('a', 1000000)),
    ('empty', '')) AS c(label, url);
SELECT hostile.add_http_case(label, jsonb_build_object('url', 'http://example.com/') || options) FROM (VALUES
    ('url a number', '{"url": 42}'::jsonb),
    ('url an array', '{"url": ["http://example.com/"]}'),
    ('url null', '{"url": null}'),
    ('url an object', '{"url": {"href": "http://example.com/"}}'),
    -- Headers.
    ('header value CR LF', jsonb_build_object('headers', jsonb_build_object('X-A', E'a\r\nInjected: 1'))),
    ('header value LF', jsonb_build_object('headers', jsonb_build_object('X-A', E'a\nb'))),
    ('header value CR', jsonb_build_object('headers', jsonb_build_object('X-A', E'a\rb'))),
    ('header value DEL', jsonb_build_object('headers', jsonb_build_object('X-A', 'a' || chr(127)))),
    ('header value ESC', jsonb_build_object('headers', jsonb_build_object('X-A', 'a' || chr(27)))),
    ('header value tab', jsonb_build_object('headers', jsonb_build_object('X-A', E'a\tb'))),
    ('header value unicode', jsonb_build_object('headers', jsonb_build_object('X-A', U&'caf\00E9 \+01F984'))),
    ('header value U+0085', jsonb_build_object('headers', jsonb_build_object('X-A', U&'a\0085b'))),
    ('header value U+2028', jsonb_build_object('headers', jsonb_build_object('X-A', U&'a\2028b'))),
    ('header value empty', '{"headers": {"X-A": ""}}'),
    ('header value spaces', '{"headers": {"X-A": "   "}}'),
    ('header value 8000 bytes', jsonb_build_object('headers', jsonb_build_object('X-A', repeat('v', 8000)))),
    ('header value 8200 bytes', jsonb_build_object('headers', jsonb_build_object('X-A', repeat('v', 8200)))),
    ('header name CR LF', jsonb_build_object('headers', jsonb_build_object(E'X-A\r\nInjected', '1'))),
    ('header name empty', '{"headers": {"": "x"}}'),
    ('header name space', '{"headers": {"X A": "x"}}'),
    ('header name leading space', '{"headers": {" X-A": "x"}}'),
    ('header name colon', '{"headers": {"X-A:": "x"}}'),
    ('header name semicolon', '{"headers": {"X-A;": "x"}}'),
    ('header name unicode', jsonb_build_object('headers', jsonb_build_object(U&'X-\00C4', 'x'))),
    ('header name 1000 chars', jsonb_build_object('headers', jsonb_build_object(repeat('a', 1000), 'x'))),
    ('header name all token chars', jsonb_build_object('headers', jsonb_build_object('!#$%&''*+-.^_`|~09AZaz', 'x'))),
    ('header webhook-id', '{"headers": {"webhook-id": "x"}}'),
    ('header WEBHOOK-SIGNATURE', '{"headers": {"WEBHOOK-SIGNATURE": "v1,x"}}'),
    ('header Webhook-Timestamp', '{"headers": {"Webhook-Timestamp": "1"}}'),
    ('header Idempotency-Key', '{"headers": {"Idempotency-Key": "x"}}'),
    ('header eo-topic', '{"headers": {"eo-topic": "x"}}'),
    ('header EO-Key', '{"headers": {"EO-Key": "x"}}'),
    ('header Content-Length', '{"headers": {"Content-Length": "1"}}'),
    ('header Transfer-Encoding', '{"headers": {"Transfer-Encoding": "chunked"}}'),
    ('header Host', '{"headers": {"Host": "evil.example"}}'),
    ('header Connection', '{"headers": {"Connection": "close"}}'),
    ('header Expect', '{"headers": {"Expect": "100-continue"}}'),
    ('header Content-Type', '{"headers": {"Content-Type": "text/html"}}'),
    ('header Authorization', '{"headers": {"Authorization": "Bearer x"}}'),
    ('header value a number', '{"headers": {"X-A": 1}}'),
    ('header value null', '{"headers": {"X-A": null}}'),
    ('header value an array', '{"headers": {"X-A": ["a"]}}'),
    ('header value an object', '{"headers": {"X-A": {"b": "c"}}}'),
    ('headers an array', '{"headers": [["X-A", "1"]]}'),
    ('headers a string', '{"headers": "X-A: 1"}'),
    ('headers empty', '{"headers": {}}'),
    ('headers null', '{"headers": null}'),
    ('10000 headers', jsonb_build_object('headers', (SELECT jsonb_object_agg('X-' || g, 'v') FROM generate_series(1, 10000) g))),
    -- Signing secrets.
    ('secret 24 bytes', jsonb_build_object('signing_secret', hostile.secret(24))),
    ('secret 23 bytes', jsonb_build_object('signing_secret', hostile.secret(23))),
    ('secret 64 bytes', jsonb_build_object('signing_secret', hostile.secret(64))),
    ('secret 65 bytes', jsonb_build_object('signing_secret', hostile.secret(65))),
    ('secret 1 MB', jsonb_build_object('signing_secret', hostile.secret(750000))),
    ('secret prefix only', '{"signing_secret": "whsec_"}'),
    ('secret no prefix', jsonb_build_object('signing_secret', substr(hostile.secret(32), 7))),
    ('secret upper-case prefix', jsonb_build_object('signing_secret', upper(substr(hostile.secret(32), 1, 6)) || substr(hostile.secret(32), 7))),
    ('secret leading space', jsonb_build_object('signing_secret', ' ' || hostile.secret(32))),
    ('secret with spaces inside', jsonb_build_object('signing_secret', regexp_replace(hostile.secret(32), '(.{10})', '\1 ', 'g'))),
    ('secret with a line break', jsonb_build_object('signing_secret', hostile.secret(32) || E'\n')),
    ('secret without padding', jsonb_build_object('signing_secret', rtrim(hostile.secret(32), '='))),
    ('secret with + and /', jsonb_build_object('signing_secret', 'whsec_' || encode(decode(repeat('fbefbeffffff', 4), 'hex'), 'base64'))),
    ('secret base64url', jsonb_build_object('signing_secret', 'whsec_' || translate(encode(decode(repeat('fbefbeffffff', 4), 'hex'), 'base64'), '+/', '-_'))),
    ('secret not base64', '{"signing_secret": "whsec_!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"}'),
    ('secret a number', '{"signing_secret": 7}'),
    ('secret null', '{"signing_secret": null}'),
    ('secret an object', '{"signing_secret": {}}'),
    ('secrets empty array', '{"signing_secret": []}'),
    ('secrets 10', jsonb_build_object('signing_secret', (SELECT jsonb_agg(hostile.secret(24 + g)) FROM generate_series(1, 10) g))),
    ('secrets 11', jsonb_build_object('signing_secret', (SELECT jsonb_agg(hostile.secret(24 + g)) FROM generate_series(1, 11) g))),
    ('secrets 100000', jsonb_build_object('signing_secret', (SELECT jsonb_agg(hostile.secret(24)) FROM generate_series(1, 100000) g))),
    ('secrets one bad', jsonb_build_object('signing_secret', jsonb_build_array(hostile.secret(32), 'whsec_x'))),
    ('secrets one a number', jsonb_build_object('signing_secret', jsonb_build_array(hostile.secret(32), 7))),
    ('secrets one null', jsonb_build_object('signing_secret', jsonb_build_array(hostile.secret(32), NULL))),
    ('secrets nested', jsonb_build_object('signing_secret', jsonb_build_array(jsonb_build_array(hostile.secret(32))))),
    -- Numbers.
    ('timeout_ms a string', '{"timeout_ms": "15000"}'),
    ('timeout_ms 1.5', '{"timeout_ms": 1.5}'),
    ('timeout_ms 15000.0', '{"timeout_ms": 15000.0}'),
    ('timeout_ms 1.5e4', '{"timeout_ms": 1.5e4}'),
    ('timeout_ms 1e308', '{"timeout_ms": 1e308}'),
    ('timeout_ms 1e-308', '{"timeout_ms": 1e-308}'),
    ('timeout_ms -0', '{"timeout_ms": -0}'),
    ('timeout_ms 0', '{"timeout_ms": 0}'),
    ('timeout_ms 1', '{"timeout_ms": 1}'),
    ('timeout_ms 600000', '{"timeout_ms": 600000}'),
    ('timeout_ms 600001', '{"timeout_ms": 600001}'),
    ('timeout_ms 2^31', '{"timeout_ms": 2147483648}'),
    ('timeout_ms 2^63', '{"timeout_ms": 9223372036854775808}'),
    ('timeout_ms -2^63', '{"timeout_ms": -9223372036854775808}'),
    ('timeout_ms null', '{"timeout_ms": null}'),
    ('timeout_ms true', '{"timeout_ms": true}'),
    ('concurrency -0', '{"concurrency": -0}'),
    ('concurrency 1e3', '{"concurrency": 1e3}'),
    ('concurrency 1001', '{"concurrency": 1001}'),
    ('concurrency "16"', '{"concurrency": "16"}'),
    ('max_attempts 1.0', '{"max_attempts": 1.0}'),
    ('max_attempts 1E+0', '{"max_attempts": 1E+0}'),
    ('max_attempts 0', '{"max_attempts": 0}'),
    ('max_attempts 1000001', '{"max_attempts": 1000001}'),
    ('max_attempts 1e308', '{"max_attempts": 1e308}'),
    ('retry_delays empty', '{"retry_delays": []}'),
    ('retry_delays negative', '{"retry_delays": ["-1s"]}'),
    ('retry_delays zero', '{"retry_delays": ["0", "1 mon -30 days"]}'),
    ('retry_delays 365 days', '{"retry_delays": ["365 days"]}'),
    ('retry_delays 366 days', '{"retry_delays": ["366 days"]}'),
    ('retry_delays 178000000 years', '{"retry_delays": ["178000000 years"]}'),
    ('retry_delays infinity', '{"retry_delays": ["infinity"]}'),
    ('retry_delays empty string', '{"retry_delays": [""]}'),
    ('retry_delays a number', '{"retry_delays": [1]}'),
    ('retry_delays nested', '{"retry_delays": [["1s"]]}'),
    ('retry_delays a string', '{"retry_delays": "1s"}'),
    ('retry_delays 100', jsonb_build_object('retry_delays', (SELECT jsonb_agg('1s'::text) FROM generate_series(1, 100)))),
    ('retry_delays 101', jsonb_build_object('retry_delays', (SELECT jsonb_agg('1s'::text) FROM generate_series(1, 101)))),
    -- tls_verify, and unknown options.
    ('tls_verify false', '{"tls_verify": false}'),
    ('tls_verify "false"', '{"tls_verify": "false"}'),
    ('tls_verify 0', '{"tls_verify": 0}'),
    ('tls_verify null', '{"tls_verify": null}'),
    ('tls_verify "yes"', '{"tls_verify": "yes"}'),
    ('tls_verify []', '{"tls_verify": []}'),
    ('option URL', '{"URL": "http://example.com/"}'),
    ('option "url "', '{"url ": "http://example.com/"}'),
    ('option channel', '{"channel": "c"}'),
    ('every option', jsonb_build_object('headers', '{"Authorization": "Bearer t", "X-Tenant": "t1"}'::jsonb,
                                        'signing_secret', jsonb_build_array(hostile.secret(32), hostile.secret(24)),
                                        'timeout_ms', 2000, 'concurrency', 4, 'max_attempts', 5,
                                        'retry_delays', '["1s", "1h"]'::jsonb, 'tls_verify', false))
    ) AS c(label, options);
CREATE TABLE hostile.http_result AS
SELECT n, label, hostile.try('eo.check_destination_options(''http'', $2)', NULL, options) AS checked,
       hostile.try('eo.create_destination($1, ''http'', $2)', 'probe ' || n, options) AS created,
       hostile.try('eo.alter_destination(''hooks'', $2)', NULL, options) AS altered
  FROM hostile.http_case ORDER BY n;
SELECT label, checked, created, altered FROM hostile.http_result ORDER BY n;
-- Where the three disagree (none expected).
SELECT label, checked, created, altered FROM hostile.http_result
 WHERE split_part(checked, ' ', 1) <> split_part(created, ' ', 1)
    OR split_part(checked, ' ', 1) <> split_part(altered, ' ', 1);
SELECT (SELECT options FROM eo.destination WHERE name = 'hooks') =
       (SELECT c.options FROM hostile.http_case c JOIN hostile.http_result r USING (n)
         WHERE r.altered LIKE 'ok%' ORDER BY n DESC LIMIT 1) AS last_accepted_kept;
-- What operators see of them: no secret, no header value.
SELECT count(*) AS probes,
       count(*) FILTER (WHERE options::text ~ 'whsec_|Bearer') AS showing_secrets
  FROM eo.destinations WHERE name LIKE 'probe %' OR name = 'hooks';
-- Kinds and names.
SELECT call, hostile.try(call, NULL) AS outcome FROM unnest(ARRAY[
    'eo.create_destination(''k1'', ''HTTP'', ''{"url": "http://example.com/"}'')',
    'eo.create_destination(''k2'', ''http '', ''{"url": "http://example.com/"}'')',
    'eo.create_destination(''k3'', NULL, ''{"url": "http://example.com/"}'')',
    'eo.create_destination(''k4'', ''http'', NULL)',
    'eo.create_destination(''k5'', ''http'')',
    'eo.create_destination(''hooks'', ''http'', ''{"url": "http://example.com/"}'')',
    'eo.alter_destination(''hooks'', NULL)',
    'eo.alter_destination(''missing'', ''{"url": "http://example.com/"}'')',
    'eo.alter_destination(''all'', ''{"url": "http://example.com/"}'')',
    'eo.alter_destination(''hooks'', ''{"channel": "c"}'')',
    'eo.alter_destination(''hooks'', ''{"url": "http://example.com/hooks"}'')'
]) AS call;
DO $$ BEGIN
    PERFORM eo.drop_destination(name) FROM eo.destination WHERE name LIKE 'probe %' OR name = 'hooks';
END $$;
SELECT count(*) AS http_destinations_left FROM eo.destination WHERE kind = 'http';

----------------------------------------------------------------------
-- Message headers, as HTTP headers of webhook deliveries
----------------------------------------------------------------------
SELECT * FROM hostile.run('eo.publish(''headers'', ''{}''::jsonb, NULL, jsonb_build_object(''X-H'', $1))');
SELECT * FROM hostile.run('eo.publish(''headers'', ''{}''::jsonb, NULL, jsonb_build_object($1, ''v''))');
SELECT label, hostile.try('eo.publish(''headers'', ''{}''::jsonb, NULL, $2)', NULL, headers) AS outcome
  FROM (VALUES
    ('value CR LF', jsonb_build_object('X-A', E'a\r\nInjected: 1')),
    ('value LF', jsonb_build_object('X-A', E'a\n')),
    ('value CR', jsonb_build_object('X-A', E'a\r')),
    ('value tab', jsonb_build_object('X-A', E'a\tb')),
    ('value DEL', jsonb_build_object('X-A', chr(127))),
    ('value unicode', jsonb_build_object('X-A', U&'caf\00E9')),
    ('value empty', '{"X-A": ""}'),
    ('name CR LF', jsonb_build_object(E'X-A\r\nInjected', '1')),
    ('name empty', '{"": "x"}'),
    ('name space', '{"X A": "x"}'),
    ('name colon', '{"X-A:": "x"}'),
    ('name unicode', jsonb_build_object(U&'\00C4', 'x')),
    ('webhook-id', '{"webhook-id": "x"}'),
    ('Webhook-Id', '{"Webhook-Id": "x"}'),
    ('WEBHOOK-SIGNATURE', '{"WEBHOOK-SIGNATURE": "v1,x"}'),
    ('webhook-timestamp', '{"webhook-timestamp": "1"}'),
    ('idempotency-key', '{"idempotency-key": "x"}'),
    ('eo-topic', '{"eo-topic": "x"}'),
    ('EO-KEY', '{"EO-KEY": "x"}'),
    ('Content-Length', '{"Content-Length": "0"}'),
    ('transfer-encoding', '{"transfer-encoding": "chunked"}'),
    ('Host', '{"Host": "evil.example"}'),
    ('Connection', '{"Connection": "close"}'),
    ('Expect', '{"Expect": "100-continue"}'),
    ('Content-Type', '{"Content-Type": "text/html"}'),
    ('Authorization', '{"Authorization": "Bearer x"}'),
    ('value a number', '{"X-A": 1}'),
    ('value null', '{"X-A": null}'),
    ('value an object', '{"X-A": {"b": "c"}}'),
    ('nested name reserved', '{"X-A": {"webhook-id": "x"}}'),
    ('an array', '[{"X-A": "x"}]'),
    ('a string', '"X-A: x"'),
    ('JSON null', 'null'),
    ('empty object', '{}')) AS c(label, headers);

SET client_min_messages = warning;
DROP SCHEMA hostile, hostile_names CASCADE;
DROP EXTENSION eo_processing;
-- Still alive.
SELECT 1 AS alive;
