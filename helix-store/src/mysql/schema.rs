//! The tables of `migrations/mysql`, for diesel's query builder. Instants are `DATETIME(6)`
//! in UTC (the pool's sessions run with `time_zone = '+00:00'`), worker ids `BINARY(16)`.

#![allow(missing_docs, unreachable_pub)]

diesel::table! {
    helix_domains (name) {
        name -> Varchar,
        created_at -> Datetime,
    }
}

diesel::table! {
    helix_queues (id) {
        id -> BigInt,
        domain -> Varchar,
        name -> Varchar,
        partition_count -> Integer,
        allocator -> Varchar,
        settings -> Text,
        assignment_version -> BigInt,
        created_at -> Datetime,
    }
}

diesel::table! {
    helix_workers (id) {
        id -> Binary,
        host -> Varchar,
        pid -> BigInt,
        labels -> Text,
        status -> Varchar,
        registered_at -> Datetime,
        lease_expires_at -> Datetime,
        session_epoch -> BigInt,
    }
}

diesel::table! {
    helix_subscriptions (worker_id, queue_id) {
        worker_id -> Binary,
        queue_id -> BigInt,
        capacity -> Integer,
        seen_version -> BigInt,
    }
}

diesel::table! {
    helix_coordinator (cluster) {
        cluster -> Varchar,
        holder -> Nullable<Binary>,
        term -> BigInt,
        expires_at -> Datetime,
    }
}

diesel::table! {
    helix_assignments (queue_id, partition_id) {
        queue_id -> BigInt,
        partition_id -> Integer,
        owner -> Nullable<Binary>,
        epoch -> BigInt,
        state -> Varchar,
        target -> Nullable<Binary>,
        coordinator_term -> BigInt,
        updated_at -> Datetime,
    }
}

diesel::table! {
    helix_events (id) {
        id -> BigInt,
        at -> Datetime,
        kind -> Varchar,
        queue_id -> Nullable<BigInt>,
        partition_id -> Nullable<Integer>,
        worker -> Nullable<Binary>,
        term -> Nullable<BigInt>,
        epoch -> Nullable<BigInt>,
        detail -> Text,
    }
}

diesel::table! {
    helix_schedules (id) {
        id -> BigInt,
        queue_id -> BigInt,
        name -> Varchar,
        cron -> Nullable<Varchar>,
        every_ms -> Nullable<BigInt>,
        time_zone -> Varchar,
        partition_id -> Integer,
        priority -> Integer,
        max_attempts -> Integer,
        timeout_ms -> BigInt,
        payload -> Blob,
        missed_slots -> Varchar,
        grace_ms -> BigInt,
        paused -> Bool,
        next_slot_at -> Datetime,
        last_slot_at -> Nullable<Datetime>,
        last_task_id -> Nullable<BigInt>,
        created_at -> Datetime,
        updated_at -> Datetime,
    }
}

diesel::table! {
    helix_schedule_runs (schedule_id, slot_at) {
        schedule_id -> BigInt,
        slot_at -> Datetime,
        task_id -> BigInt,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    helix_domains,
    helix_queues,
    helix_workers,
    helix_subscriptions,
    helix_coordinator,
    helix_assignments,
    helix_events,
    helix_schedules,
    helix_schedule_runs,
);
