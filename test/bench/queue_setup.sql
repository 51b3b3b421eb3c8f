-- queue_bench.sh: the schema of the queue benchmark.  A queue destination
-- "bench" (eo.read / eo.ack), the hand-written SKIP LOCKED queue of the
-- baseline (hw_queue, shaped like pgmq's: id, read count, visibility
-- time, the message as jsonb, an index on the visibility time), and the
-- consumers' work table.
CREATE EXTENSION eo_processing;
SELECT eo.create_destination('bench', 'queue',
    '{"channel": "bench_ready", "visibility_timeout": "30s"}');
SELECT eo.subscribe('bench.*', 'bench');
CREATE TABLE hw_queue (
    msg_id      bigserial PRIMARY KEY,
    read_ct     integer NOT NULL DEFAULT 0,
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    vt          timestamptz NOT NULL,
    message     jsonb NOT NULL
);
CREATE INDEX hw_queue_vt ON hw_queue (vt);
CREATE TABLE queue_work (id uuid NOT NULL, done_at timestamptz NOT NULL DEFAULT clock_timestamp());
