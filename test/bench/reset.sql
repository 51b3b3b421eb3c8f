-- Between two measured runs: empty every table a run writes, so each run
-- starts from the same state, then flush dirty pages so that no run pays
-- for the previous run's checkpoint.
TRUNCATE processed, ledger, eo.inbox, eo.producer_seq;
VACUUM ANALYZE accounts;
CHECKPOINT;
