-- Helix schema, version 1 (SQLite 3.38 and later; the store ships SQLite compiled in).
-- Mirrors migrations/mysql table for table and column for column; see docs/data-model.md.
-- Names compare byte for byte (SQLite's default BINARY collation): `Orders` and `orders`
-- are different queues.
-- Every instant is TEXT in the one fixed format 'YYYY-MM-DD HH:MM:SS.SSS' (UTC), written only
-- by SQLite itself (strftime('%Y-%m-%d %H:%M:%f', 'now', ...)), never by a client clock: a
-- single format makes text order chronological order, so instants compare as text.
-- Ids, terms and epochs are 64-bit INTEGERs; worker ids are 16-byte BLOBs (UUID v7).

CREATE TABLE helix_domains (
    name        TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (name),
    CONSTRAINT ck_domains_name CHECK (length(name) BETWEEN 1 AND 64)
);

CREATE TABLE helix_queues (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    domain              TEXT NOT NULL,
    name                TEXT NOT NULL,
    partition_count     INTEGER NOT NULL,
    allocator           TEXT NOT NULL,
    settings            TEXT NOT NULL,
    assignment_version  INTEGER NOT NULL DEFAULT 0,
    created_at          TEXT NOT NULL,
    CONSTRAINT uq_queues_domain_name UNIQUE (domain, name),
    CONSTRAINT fk_queues_domain FOREIGN KEY (domain) REFERENCES helix_domains (name),
    CONSTRAINT ck_queues_name CHECK (length(name) BETWEEN 1 AND 64),
    CONSTRAINT ck_queues_allocator CHECK (length(allocator) BETWEEN 1 AND 64),
    CONSTRAINT ck_queues_partition_count CHECK (partition_count BETWEEN 1 AND 65536),
    CONSTRAINT ck_queues_settings CHECK (json_valid(settings))
);

CREATE TABLE helix_workers (
    id                BLOB NOT NULL,
    host              TEXT NOT NULL,
    pid               INTEGER NOT NULL,
    labels            TEXT NOT NULL,
    status            TEXT NOT NULL,
    registered_at     TEXT NOT NULL,
    lease_expires_at  TEXT NOT NULL,
    session_epoch     INTEGER NOT NULL,
    PRIMARY KEY (id),
    CONSTRAINT ck_workers_id CHECK (length(id) = 16),
    CONSTRAINT ck_workers_host CHECK (length(CAST(host AS BLOB)) <= 255),
    CONSTRAINT ck_workers_status CHECK (status IN ('ACTIVE', 'DRAINING', 'LEFT', 'DEAD')),
    CONSTRAINT ck_workers_labels CHECK (json_valid(labels))
);
CREATE INDEX ix_workers_status_lease ON helix_workers (status, lease_expires_at);

CREATE TABLE helix_subscriptions (
    worker_id  BLOB NOT NULL,
    queue_id   INTEGER NOT NULL,
    capacity   INTEGER NOT NULL DEFAULT 1,
    PRIMARY KEY (worker_id, queue_id)
);
CREATE INDEX ix_subscriptions_queue ON helix_subscriptions (queue_id);

CREATE TABLE helix_coordinator (
    cluster     TEXT NOT NULL,
    holder      BLOB NULL,
    term        INTEGER NOT NULL,
    expires_at  TEXT NOT NULL,
    PRIMARY KEY (cluster)
);

CREATE TABLE helix_assignments (
    queue_id          INTEGER NOT NULL,
    partition_id      INTEGER NOT NULL,
    owner             BLOB NULL,
    epoch             INTEGER NOT NULL DEFAULT 0,
    state             TEXT NOT NULL DEFAULT 'ASSIGNED',
    target            BLOB NULL,
    coordinator_term  INTEGER NOT NULL DEFAULT 0,
    updated_at        TEXT NOT NULL,
    PRIMARY KEY (queue_id, partition_id),
    CONSTRAINT ck_assignments_state CHECK (state IN ('ASSIGNED', 'REVOKING', 'FAILED'))
);
CREATE INDEX ix_assignments_owner ON helix_assignments (owner);

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

CREATE TABLE helix_events (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            TEXT NOT NULL,
    kind          TEXT NOT NULL,
    queue_id      INTEGER NULL,
    partition_id  INTEGER NULL,
    worker        BLOB NULL,
    term          INTEGER NULL,
    epoch         INTEGER NULL,
    detail        TEXT NOT NULL,
    CONSTRAINT ck_events_detail CHECK (json_valid(detail))
);
CREATE INDEX ix_events_at ON helix_events (at);
