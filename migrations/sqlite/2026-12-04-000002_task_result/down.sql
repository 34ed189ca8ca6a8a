ALTER TABLE helix_task_history DROP COLUMN result;
ALTER TABLE helix_tasks DROP COLUMN result;
