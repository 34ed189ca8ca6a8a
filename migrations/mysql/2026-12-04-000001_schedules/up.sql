-- Helix schema, version 4: recurring schedules (DESIGN §6, docs/scheduling.md). A schedule
-- turns each slot of its recurrence into exactly one task; the primary key of
-- helix_schedule_runs on (schedule, slot) is what makes a slot fire once, whatever leader
-- writes it and however often.

CREATE TABLE helix_schedules (
    id             BIGINT NOT NULL AUTO_INCREMENT,
    queue_id       BIGINT NOT NULL,
    -- 1 to 128 letters, digits, '-', '_' and '.' (MAX_SCHEDULE_NAME_BYTES).
    name           VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- The recurrence: exactly one of a cron expression (at most 255 bytes) and an interval.
    cron           VARCHAR(255) NULL,
    every_ms       BIGINT NULL,
    -- An IANA time zone name.
    time_zone      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    -- The fields of the tasks it makes.
    partition_id   INT NOT NULL,
    priority       INT NOT NULL,
    max_attempts   INT NOT NULL,
    timeout_ms     BIGINT NOT NULL,
    -- The payload template, at most 1 MiB (MAX_PAYLOAD_BYTES).
    payload        MEDIUMBLOB NOT NULL,
    missed_slots   VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    grace_ms       BIGINT NOT NULL,
    paused         BOOLEAN NOT NULL,
    -- The cursor: the first slot not yet materialized.
    next_slot_at   DATETIME(6) NOT NULL,
    last_slot_at   DATETIME(6) NULL,
    last_task_id   BIGINT NULL,
    created_at     DATETIME(6) NOT NULL,
    updated_at     DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    -- get_schedule, set_schedule_paused, delete_schedule (by queue and name), list_schedules
    -- of one queue (in name order), delete_queue; and one name per queue.
    UNIQUE KEY uq_schedules_name (queue_id, name),
    -- due_schedules: WHERE paused = 0 AND next_slot_at <= ? ORDER BY next_slot_at.
    KEY ix_schedules_due (paused, next_slot_at),
    CONSTRAINT ck_schedules_recurrence CHECK ((cron IS NULL) <> (every_ms IS NULL)),
    CONSTRAINT ck_schedules_missed_slots CHECK (missed_slots IN ('SKIP', 'RUN_LATEST'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- One row per slot that made its task. The primary key is the unique key on
-- (schedule, slot): fire_schedules inserts a slot's row before it enqueues the slot's task,
-- and a slot whose row is already there is a quiet duplicate that makes no task.
CREATE TABLE helix_schedule_runs (
    schedule_id    BIGINT NOT NULL,
    slot_at        DATETIME(6) NOT NULL,
    -- The slot's task; 0 only inside the firing transaction, between the insert of the row
    -- and the enqueue of its task.
    task_id        BIGINT NOT NULL,
    -- fire_schedules (the duplicate check), the cancellation of future slots by a pause or a
    -- delete (schedule_id = ? AND slot_at > now), delete_schedule and delete_queue.
    PRIMARY KEY (schedule_id, slot_at),
    -- prune_tasks: runs of slots older than the retention.
    KEY ix_schedule_runs_slot (slot_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
