"""The durable job ledger: the job model, its one owner of state changes, storage, backup, lock."""
