DROP TABLE helix_task_history;
DROP TABLE helix_tasks;

CREATE TABLE helix_tasks (
    id             BIGINT NOT NULL AUTO_INCREMENT,
    queue_id       BIGINT NOT NULL,
    partition_id   INT NOT NULL,
    state          VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    priority       INT NOT NULL DEFAULT 0,
    run_at         DATETIME(6) NOT NULL,
    attempts       INT NOT NULL DEFAULT 0,
    max_attempts   INT NOT NULL,
    dedup_key      VARCHAR(255) NULL,
    payload        MEDIUMBLOB NOT NULL,
    claimed_epoch  BIGINT NULL,
    claimed_by     BINARY(16) NULL,
    created_at     DATETIME(6) NOT NULL,
    started_at     DATETIME(6) NULL,
    finished_at    DATETIME(6) NULL,
    last_error     TEXT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_tasks_dedup (queue_id, dedup_key),
    KEY ix_tasks_claim (queue_id, partition_id, state, priority, run_at, id),
    CONSTRAINT ck_tasks_state CHECK (state IN ('PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'DEAD', 'CANCELLED'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
