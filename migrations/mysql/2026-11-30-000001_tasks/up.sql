-- Helix schema, version 2: the task queue (DESIGN §6, docs/data-model.md, docs/tasks.md).
-- Replaces the placeholder helix_tasks of version 1 (never written by any release) and adds
-- the history table that finished tasks move into, so the hot table holds only unfinished
-- tasks and claims stay fast however many tasks have finished.

DROP TABLE helix_tasks;

-- Unfinished tasks: PENDING, RUNNING, CANCELLING.
CREATE TABLE helix_tasks (
    id             BIGINT NOT NULL AUTO_INCREMENT,
    queue_id       BIGINT NOT NULL,
    partition_id   INT NOT NULL,
    state          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    priority       INT NOT NULL,
    run_at         DATETIME(6) NOT NULL,
    attempts       INT NOT NULL,
    max_attempts   INT NOT NULL,
    timeout_ms     BIGINT NOT NULL,
    -- Compared byte for byte (no trailing-space padding), at most 255 bytes of UTF-8.
    dedup_key      VARBINARY(255) NULL,
    -- At most 1 MiB (MAX_PAYLOAD_BYTES).
    payload        MEDIUMBLOB NOT NULL,
    claimed_epoch  BIGINT NULL,
    claimed_by     BINARY(16) NULL,
    created_at     DATETIME(6) NOT NULL,
    started_at     DATETIME(6) NULL,
    deadline_at    DATETIME(6) NULL,
    -- At most 4,096 bytes (MAX_LAST_ERROR_BYTES).
    last_error     TEXT NULL,
    PRIMARY KEY (id),
    -- At most one unfinished task per key; NULL keys never collide.
    UNIQUE KEY uq_tasks_dedup (queue_id, dedup_key),
    -- The claim: WHERE queue_id = ? AND partition_id = ? AND state = 'PENDING' AND run_at <= ?
    -- ORDER BY priority, run_at, id; also orphan recovery (state IN RUNNING, CANCELLING).
    KEY ix_tasks_claim (queue_id, partition_id, state, priority, run_at, id),
    -- The next due time of each partition: MIN(run_at) per partition of the pending tasks.
    KEY ix_tasks_due (queue_id, partition_id, state, run_at),
    CONSTRAINT ck_tasks_state CHECK (state IN ('PENDING', 'RUNNING', 'CANCELLING'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Finished tasks: DONE, DEAD, CANCELLED; moved here in the transaction that finishes them,
-- deleted by retention (prune_tasks).
CREATE TABLE helix_task_history (
    id             BIGINT NOT NULL,
    queue_id       BIGINT NOT NULL,
    partition_id   INT NOT NULL,
    state          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    priority       INT NOT NULL,
    run_at         DATETIME(6) NOT NULL,
    attempts       INT NOT NULL,
    max_attempts   INT NOT NULL,
    timeout_ms     BIGINT NOT NULL,
    dedup_key      VARBINARY(255) NULL,
    payload        MEDIUMBLOB NOT NULL,
    claimed_epoch  BIGINT NULL,
    claimed_by     BINARY(16) NULL,
    created_at     DATETIME(6) NOT NULL,
    started_at     DATETIME(6) NULL,
    deadline_at    DATETIME(6) NULL,
    last_error     TEXT NULL,
    finished_at    DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    -- Listing by state with keyset paging on id.
    KEY ix_task_history_list (queue_id, state, id),
    -- Retention.
    KEY ix_task_history_finished (finished_at),
    CONSTRAINT ck_task_history_state CHECK (state IN ('DONE', 'DEAD', 'CANCELLED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
