-- Hostile input: every public function fed NULLs, empty strings, values at
-- and beyond the documented limits (msg_id and key 1024 bytes; consumer,
-- producer, topic and destination name 256 bytes; headers 4096 bytes as
-- stored; channel 63 bytes), deeply nested JSON, odd but valid UTF-8,
-- hostile identifiers, and random strings (deterministic: setseed).
--
-- hostile.try() runs one call in its own subtransaction and says "ok" or
-- the SQLSTATE, followed by the rows the call added or removed per table.
-- A call that fails must leave every table as it was: otherwise the
-- outcome reads "PARTIAL WRITE".  hostile.run() makes one call per input
-- ($1 is the input's value, $2 its JSON value for JSON inputs) and shows,
-- per distinct outcome, the inputs that gave it, in input order.
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
-- Rows in every table of the extension.
CREATE FUNCTION hostile.counts() RETURNS bigint[]
LANGUAGE sql AS $$
    SELECT ARRAY[(SELECT count(*) FROM eo.inbox), (SELECT count(*) FROM eo.producer_seq),
                 (SELECT count(*) FROM eo.outbox), (SELECT count(*) FROM eo.message_log),
                 (SELECT count(*) FROM eo.outbox_key), (SELECT count(*) FROM eo.destination),
                 (SELECT count(*) FROM eo.subscription), (SELECT count(*) FROM eo.delivery),
                 (SELECT count(*) FROM eo.destination_stats), (SELECT count(*) FROM eo.http_attempt)]
$$;

-- One call in a subtransaction: 'ok' or the SQLSTATE, then the rows it
-- added or removed per table.
CREATE FUNCTION hostile.try(call text, t text, j jsonb DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    tables text[] := ARRAY['inbox', 'producer_seq', 'outbox', 'message_log', 'outbox_key',
                           'destination', 'subscription', 'delivery', 'destination_stats',
                           'http_attempt'];
    before bigint[] := hostile.counts();
    after bigint[];
    outcome text;
    changes text := '';
BEGIN
    BEGIN
        EXECUTE 'SELECT ' || call USING t, j;
        outcome := 'ok';
    EXCEPTION WHEN OTHERS THEN
        outcome := SQLSTATE;
    END;
    after := hostile.counts();
    FOR i IN 1 .. array_length(tables, 1) LOOP
        IF after[i] <> before[i] THEN
            changes := changes || format(' %s%s%s', tables[i],
                                         CASE WHEN after[i] > before[i] THEN '+' END,
                                         after[i] - before[i]);
        END IF;
    END LOOP;
    IF outcome <> 'ok' AND changes <> '' THEN
        RETURN outcome || ' PARTIAL WRITE:' || changes;
    END IF;
    RETURN outcome || changes;
END $$;

-- One call per text input ($1) or, with json => true, per JSON input ($2,
-- with $1 the input's name); the inputs per distinct outcome, in lines of
-- at most 64 characters.
CREATE FUNCTION hostile.run(call text, json boolean DEFAULT false)
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
        outcomes := outcomes || hostile.try(call, CASE WHEN json THEN r.name ELSE r.val END, r.json);
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

SET client_min_messages = warning;
DROP SCHEMA hostile CASCADE;
DROP EXTENSION eo_processing;
-- Still alive.
SELECT 1 AS alive;
