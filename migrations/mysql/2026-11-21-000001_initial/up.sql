-- Helix schema, version 1 (MySQL 8 / MariaDB 10.6 and later).
-- Names compare byte for byte (ascii_bin): `Orders` and `orders` are different queues.
-- Every instant is DATETIME(6) in UTC, written from the server's NOW(6), never a client clock.
-- Ids, terms and epochs are signed BIGINT so MySQL and SQLite share one data model.

CREATE TABLE helix_domains (
    name        VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    created_at  DATETIME(6) NOT NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE helix_queues (
    id                  BIGINT NOT NULL AUTO_INCREMENT,
    domain              VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    name                VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    partition_count     INT NOT NULL,
    allocator           VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    settings            TEXT NOT NULL,
    assignment_version  BIGINT NOT NULL DEFAULT 0,
    created_at          DATETIME(6) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_queues_domain_name (domain, name),
    CONSTRAINT fk_queues_domain FOREIGN KEY (domain) REFERENCES helix_domains (name),
    CONSTRAINT ck_queues_partition_count CHECK (partition_count BETWEEN 1 AND 65536),
    CONSTRAINT ck_queues_settings CHECK (JSON_VALID(settings))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE helix_workers (
    id                BINARY(16) NOT NULL,
    host              VARCHAR(255) NOT NULL,
    pid               BIGINT NOT NULL,
    labels            TEXT NOT NULL,
    status            VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    registered_at     DATETIME(6) NOT NULL,
    lease_expires_at  DATETIME(6) NOT NULL,
    session_epoch     BIGINT NOT NULL,
    PRIMARY KEY (id),
    KEY ix_workers_status_lease (status, lease_expires_at),
    CONSTRAINT ck_workers_status CHECK (status IN ('ACTIVE', 'DRAINING', 'LEFT', 'DEAD')),
    CONSTRAINT ck_workers_labels CHECK (JSON_VALID(labels))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE helix_subscriptions (
    worker_id  BINARY(16) NOT NULL,
    queue_id   BIGINT NOT NULL,
    capacity   INT NOT NULL DEFAULT 1,
    PRIMARY KEY (worker_id, queue_id),
    KEY ix_subscriptions_queue (queue_id)
) ENGINE = InnoDB;

CREATE TABLE helix_coordinator (
    cluster     VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    holder      BINARY(16) NULL,
    term        BIGINT NOT NULL,
    expires_at  DATETIME(6) NOT NULL,
    PRIMARY KEY (cluster)
) ENGINE = InnoDB;

CREATE TABLE helix_assignments (
    queue_id          BIGINT NOT NULL,
    partition_id      INT NOT NULL,
    owner             BINARY(16) NULL,
    epoch             BIGINT NOT NULL DEFAULT 0,
    state             VARCHAR(16) CHARACTER SET ascii COLLATE ascii_bin NOT NULL DEFAULT 'ASSIGNED',
    target            BINARY(16) NULL,
    coordinator_term  BIGINT NOT NULL DEFAULT 0,
    updated_at        DATETIME(6) NOT NULL,
    PRIMARY KEY (queue_id, partition_id),
    KEY ix_assignments_owner (owner),
    CONSTRAINT ck_assignments_state CHECK (state IN ('ASSIGNED', 'REVOKING', 'FAILED'))
) ENGINE = InnoDB;

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

CREATE TABLE helix_events (
    id            BIGINT NOT NULL AUTO_INCREMENT,
    at            DATETIME(6) NOT NULL,
    kind          VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
    queue_id      BIGINT NULL,
    partition_id  INT NULL,
    worker        BINARY(16) NULL,
    term          BIGINT NULL,
    epoch         BIGINT NULL,
    detail        TEXT NOT NULL,
    PRIMARY KEY (id),
    KEY ix_events_at (at),
    CONSTRAINT ck_events_detail CHECK (JSON_VALID(detail))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
