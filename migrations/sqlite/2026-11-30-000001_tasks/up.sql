-- Helix schema, version 2: the task queue. Mirrors migrations/mysql column for column; see
-- docs/data-model.md and docs/tasks.md. Replaces the placeholder helix_tasks of version 1
-- (never written by any release) and adds the history table finished tasks move into.

DROP TABLE helix_tasks;

-- Unfinished tasks: PENDING, RUNNING, CANCELLING. AUTOINCREMENT: ids are never reused, even
-- after the newest task moved to the history.
CREATE TABLE helix_tasks (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id       INTEGER NOT NULL,
    partition_id   INTEGER NOT NULL,
    state          TEXT NOT NULL,
    priority       INTEGER NOT NULL,
    run_at         TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    max_attempts   INTEGER NOT NULL,
    timeout_ms     INTEGER NOT NULL,
    dedup_key      TEXT NULL,
    payload        BLOB NOT NULL,
    claimed_epoch  INTEGER NULL,
    claimed_by     BLOB NULL,
    created_at     TEXT NOT NULL,
    started_at     TEXT NULL,
    deadline_at    TEXT NULL,
    last_error     TEXT NULL,
    CONSTRAINT uq_tasks_dedup UNIQUE (queue_id, dedup_key),
    CONSTRAINT ck_tasks_state CHECK (state IN ('PENDING', 'RUNNING', 'CANCELLING')),
    CONSTRAINT ck_tasks_dedup_key CHECK (dedup_key IS NULL OR length(CAST(dedup_key AS BLOB)) BETWEEN 1 AND 255),
    CONSTRAINT ck_tasks_payload CHECK (length(payload) <= 1048576)
);
-- The claim, in claim order; also orphan recovery.
CREATE INDEX ix_tasks_claim ON helix_tasks (queue_id, partition_id, state, priority, run_at, id);
-- The next due time of each partition.
CREATE INDEX ix_tasks_due ON helix_tasks (queue_id, partition_id, state, run_at);

-- Finished tasks: DONE, DEAD, CANCELLED.
CREATE TABLE helix_task_history (
    id             INTEGER PRIMARY KEY,
    queue_id       INTEGER NOT NULL,
    partition_id   INTEGER NOT NULL,
    state          TEXT NOT NULL,
    priority       INTEGER NOT NULL,
    run_at         TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    max_attempts   INTEGER NOT NULL,
    timeout_ms     INTEGER NOT NULL,
    dedup_key      TEXT NULL,
    payload        BLOB NOT NULL,
    claimed_epoch  INTEGER NULL,
    claimed_by     BLOB NULL,
    created_at     TEXT NOT NULL,
    started_at     TEXT NULL,
    deadline_at    TEXT NULL,
    last_error     TEXT NULL,
    finished_at    TEXT NOT NULL,
    CONSTRAINT ck_task_history_state CHECK (state IN ('DONE', 'DEAD', 'CANCELLED'))
);
CREATE INDEX ix_task_history_list ON helix_task_history (queue_id, state, id);
CREATE INDEX ix_task_history_finished ON helix_task_history (finished_at);
