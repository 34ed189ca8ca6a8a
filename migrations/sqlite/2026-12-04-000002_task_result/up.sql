-- What the attempt that completed a task reported (a webhook's response status and the start
-- of its body, say), at most 4,096 bytes (MAX_RESULT_BYTES, cut by the store at a character
-- boundary). Written with the completion only, so it is NULL in the hot table until then;
-- both tables carry it so that they keep one column list.
ALTER TABLE helix_tasks ADD COLUMN result TEXT NULL;
ALTER TABLE helix_task_history ADD COLUMN result TEXT NULL;
