DROP TABLE IF EXISTS helix_events;
DROP TABLE IF EXISTS helix_tasks;
DROP TABLE IF EXISTS helix_assignments;
DROP TABLE IF EXISTS helix_coordinator;
DROP TABLE IF EXISTS helix_subscriptions;
DROP TABLE IF EXISTS helix_workers;
DROP TABLE IF EXISTS helix_queues;
DROP TABLE IF EXISTS helix_domains;
