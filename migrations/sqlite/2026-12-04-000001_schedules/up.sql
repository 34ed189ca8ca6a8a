-- Helix schema, version 4: recurring schedules. Mirrors migrations/mysql column for column;
-- see docs/scheduling.md. Instants are TEXT 'YYYY-MM-DD HH:MM:SS.SSS' (UTC), as everywhere.

-- AUTOINCREMENT: schedule ids are never reused, even after the newest was deleted.
CREATE TABLE helix_schedules (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    queue_id       INTEGER NOT NULL,
    name           TEXT NOT NULL,
    cron           TEXT NULL,
    every_ms       INTEGER NULL,
    time_zone      TEXT NOT NULL,
    partition_id   INTEGER NOT NULL,
    priority       INTEGER NOT NULL,
    max_attempts   INTEGER NOT NULL,
    timeout_ms     INTEGER NOT NULL,
    payload        BLOB NOT NULL,
    missed_slots   TEXT NOT NULL,
    grace_ms       INTEGER NOT NULL,
    paused         INTEGER NOT NULL,
    -- The cursor: the first slot not yet materialized.
    next_slot_at   TEXT NOT NULL,
    last_slot_at   TEXT NULL,
    last_task_id   INTEGER NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    -- get_schedule, set_schedule_paused, delete_schedule (by queue and name), list_schedules
    -- of one queue (in name order), delete_queue; and one name per queue.
    CONSTRAINT uq_schedules_name UNIQUE (queue_id, name),
    CONSTRAINT ck_schedules_recurrence CHECK ((cron IS NULL) <> (every_ms IS NULL)),
    CONSTRAINT ck_schedules_missed_slots CHECK (missed_slots IN ('SKIP', 'RUN_LATEST')),
    CONSTRAINT ck_schedules_payload CHECK (length(payload) <= 1048576)
);
-- due_schedules: WHERE paused = 0 AND next_slot_at <= ? ORDER BY next_slot_at.
CREATE INDEX ix_schedules_due ON helix_schedules (paused, next_slot_at);

-- One row per slot that made its task; the primary key is the unique key on (schedule, slot)
-- that makes a slot fire once. task_id is 0 only inside the firing transaction, between the
-- insert of the row and the enqueue of its task.
CREATE TABLE helix_schedule_runs (
    schedule_id    INTEGER NOT NULL,
    slot_at        TEXT NOT NULL,
    task_id        INTEGER NOT NULL,
    -- fire_schedules (the duplicate check), the cancellation of future slots by a pause or a
    -- delete (schedule_id = ? AND slot_at > now), delete_schedule and delete_queue.
    PRIMARY KEY (schedule_id, slot_at)
) WITHOUT ROWID;
-- prune_tasks: runs of slots older than the retention.
CREATE INDEX ix_schedule_runs_slot ON helix_schedule_runs (slot_at);
