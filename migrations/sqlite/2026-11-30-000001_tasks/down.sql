DROP TABLE helix_task_history;
DROP TABLE helix_tasks;

CREATE TABLE helix_tasks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id       INTEGER NOT NULL,
    partition_id   INTEGER NOT NULL,
    state          TEXT NOT NULL,
    priority       INTEGER NOT NULL DEFAULT 0,
    run_at         TEXT NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    max_attempts   INTEGER NOT NULL,
    dedup_key      TEXT NULL,
    payload        BLOB NOT NULL,
    claimed_epoch  INTEGER NULL,
    claimed_by     BLOB NULL,
    created_at     TEXT NOT NULL,
    started_at     TEXT NULL,
    finished_at    TEXT NULL,
    last_error     TEXT NULL,
    CONSTRAINT uq_tasks_dedup UNIQUE (queue_id, dedup_key),
    CONSTRAINT ck_tasks_state CHECK (state IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'DEAD', 'CANCELLED'))
);
-- The claim index: covers `WHERE queue_id = ? AND partition_id = ? AND state = 'PENDING'
-- AND run_at <= ?` in the claim order (priority, run_at, id).
CREATE INDEX ix_tasks_claim ON helix_tasks (queue_id, partition_id, state, priority, run_at, id);
