-- Variables a job's `artifacts:reports:dotenv` exported ([{"key":..,"value":..}]), for the
-- jobs that depend on it (GitLab passes them as variables to later jobs).
ALTER TABLE jobs ADD COLUMN dotenv TEXT NOT NULL DEFAULT '[]';
