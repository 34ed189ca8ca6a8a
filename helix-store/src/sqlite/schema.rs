//! The SQLite tables as diesel sees them (`migrations/sqlite`). Every integer column is
//! `BigInt`: SQLite stores all integers as 64-bit. Instants are TEXT in the fixed format
//! `YYYY-MM-DD HH:MM:SS.SSS` (UTC), read through diesel's `Timestamp`.

diesel::table! {
    helix_domains (name) {
        name -> Text,
        created_at -> Timestamp,
    }
}

diesel::table! {
    helix_queues (id) {
        id -> BigInt,
        domain -> Text,
        name -> Text,
        partition_count -> BigInt,
        allocator -> Text,
        settings -> Text,
        assignment_version -> BigInt,
        created_at -> Timestamp,
    }
}

diesel::table! {
    helix_workers (id) {
        id -> Binary,
        host -> Text,
        pid -> BigInt,
        labels -> Text,
        status -> Text,
        registered_at -> Timestamp,
        lease_expires_at -> Timestamp,
        session_epoch -> BigInt,
    }
}

diesel::table! {
    helix_subscriptions (worker_id, queue_id) {
        worker_id -> Binary,
        queue_id -> BigInt,
        capacity -> BigInt,
        seen_version -> BigInt,
    }
}

diesel::table! {
    helix_coordinator (cluster) {
        cluster -> Text,
        holder -> Nullable<Binary>,
        term -> BigInt,
        expires_at -> Timestamp,
    }
}

diesel::table! {
    helix_assignments (queue_id, partition_id) {
        queue_id -> BigInt,
        partition_id -> BigInt,
        owner -> Nullable<Binary>,
        epoch -> BigInt,
        state -> Text,
        target -> Nullable<Binary>,
        coordinator_term -> BigInt,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    helix_tasks (id) {
        id -> BigInt,
        queue_id -> BigInt,
        partition_id -> BigInt,
        state -> Text,
        priority -> BigInt,
        run_at -> Timestamp,
        attempts -> BigInt,
        max_attempts -> BigInt,
        dedup_key -> Nullable<Text>,
        payload -> Binary,
        claimed_epoch -> Nullable<BigInt>,
        claimed_by -> Nullable<Binary>,
        created_at -> Timestamp,
        started_at -> Nullable<Timestamp>,
        finished_at -> Nullable<Timestamp>,
        last_error -> Nullable<Text>,
    }
}

diesel::table! {
    helix_events (id) {
        id -> BigInt,
        at -> Timestamp,
        kind -> Text,
        queue_id -> Nullable<BigInt>,
        partition_id -> Nullable<BigInt>,
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
        name -> Text,
        cron -> Nullable<Text>,
        every_ms -> Nullable<BigInt>,
        time_zone -> Text,
        partition_id -> BigInt,
        priority -> BigInt,
        max_attempts -> BigInt,
        timeout_ms -> BigInt,
        payload -> Binary,
        missed_slots -> Text,
        grace_ms -> BigInt,
        paused -> Bool,
        next_slot_at -> Timestamp,
        last_slot_at -> Nullable<Timestamp>,
        last_task_id -> Nullable<BigInt>,
        created_at -> Timestamp,
        updated_at -> Timestamp,
    }
}

diesel::table! {
    helix_schedule_runs (schedule_id, slot_at) {
        schedule_id -> BigInt,
        slot_at -> Timestamp,
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
    helix_tasks,
    helix_events,
    helix_schedules,
    helix_schedule_runs,
);
