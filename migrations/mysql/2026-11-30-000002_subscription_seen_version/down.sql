ALTER TABLE helix_subscriptions DROP COLUMN seen_version;
