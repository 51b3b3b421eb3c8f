-- Between two measured runs of test/bench/outbox_bench.sh: empty every
-- table a run writes, so each run starts from the same state, then flush
-- dirty pages so that no run pays for the previous run's checkpoint.
TRUNCATE ledger, my_outbox, eo.outbox, eo.message_log;
VACUUM ANALYZE accounts;
CHECKPOINT;
