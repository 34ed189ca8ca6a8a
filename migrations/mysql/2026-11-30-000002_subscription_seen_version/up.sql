-- The assignment version of the subscribed queue that the worker's last heartbeat saw, so
-- that the heartbeat itself (one statement) tells the worker whether its assignments moved.
-- -1: never seen (a new subscription reports a move on its first heartbeat).
ALTER TABLE helix_subscriptions ADD COLUMN seen_version BIGINT NOT NULL DEFAULT -1;
