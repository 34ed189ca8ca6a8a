DROP TABLE helix_schedule_runs;
DROP TABLE helix_schedules;
