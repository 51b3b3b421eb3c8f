-- Between two measured runs of test/bench/http_bench.sh: empty every table
-- a run writes, so each run starts from the same state, then flush dirty
-- pages so that no run pays for the previous run's checkpoint.
TRUNCATE eo.outbox, eo.message_log, eo.delivery, eo.http_attempt, app_outbox;
CHECKPOINT;
