-- Slipway's state store, version 1. Conventions (both dialects, so one set of queries
-- serves SQLite and PostgreSQL through sqlx's Any driver):
--   * ids are 64-bit integers; timestamps are BIGINT milliseconds since the Unix epoch (UTC);
--   * flags are BIGINT 0/1 (the Any driver cannot decode SQLite booleans);
--   * JSON documents are TEXT; secrets are BLOBs sealed with XChaCha20-Poly1305.

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE users (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    is_admin BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    token_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    expires_at BIGINT,
    revoked_at BIGINT
);
CREATE INDEX api_tokens_user ON api_tokens(user_id);

CREATE TABLE groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id BIGINT NOT NULL REFERENCES groups(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members(user_id);

CREATE TABLE projects (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE,
    repository TEXT NOT NULL,
    default_branch TEXT NOT NULL,
    -- Seconds between polls of a remote repository; NULL: not polled.
    poll_interval_secs BIGINT,
    last_polled_at BIGINT,
    -- The refs seen at the last poll ({"refs/heads/main": "sha", ...}).
    poll_refs TEXT NOT NULL DEFAULT '{}',
    settings TEXT NOT NULL DEFAULT '{}',
    -- The last pipeline iid handed out (GitLab's per-project CI_PIPELINE_IID).
    pipeline_counter BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE project_members (
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    role TEXT NOT NULL,
    PRIMARY KEY (project_id, user_id)
);
CREATE INDEX project_members_user ON project_members(user_id);

-- CI/CD variables. A plain variable keeps `value`; a secret keeps only `sealed`.
CREATE TABLE project_variables (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- GitLab's environment scope: '*' for all, a name, or a wildcard such as 'review/*'.
    environment_scope TEXT NOT NULL DEFAULT '*',
    value TEXT,
    sealed BLOB,
    is_secret BIGINT NOT NULL,
    masked BIGINT NOT NULL,
    protected BIGINT NOT NULL,
    raw BIGINT NOT NULL,
    is_file BIGINT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name, environment_scope)
);

CREATE TABLE project_webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    sealed_secret BLOB NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, provider)
);

CREATE TABLE trigger_tokens (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    description TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    owner_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT,
    revoked_at BIGINT
);

CREATE TABLE schedules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    description TEXT NOT NULL,
    cron TEXT NOT NULL,
    cron_timezone TEXT NOT NULL DEFAULT 'UTC',
    ref_name TEXT NOT NULL,
    variables TEXT NOT NULL DEFAULT '[]',
    next_run_at BIGINT NOT NULL,
    active BIGINT NOT NULL DEFAULT 1,
    owner_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    last_pipeline_id BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules(active, next_run_at);

CREATE TABLE pipelines (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    iid BIGINT NOT NULL,
    ref_name TEXT NOT NULL,
    is_tag BIGINT NOT NULL,
    sha TEXT NOT NULL,
    before_sha TEXT,
    -- GitLab's CI_PIPELINE_SOURCE.
    source TEXT NOT NULL,
    status TEXT NOT NULL,
    name TEXT,
    commit_message TEXT,
    user_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    schedule_id BIGINT REFERENCES schedules(id) ON DELETE SET NULL,
    -- Variables given when the pipeline was triggered: [{"key":..,"value":..}].
    variables TEXT NOT NULL DEFAULT '[]',
    -- The plan (slipway_core::plan::Plan as JSON) the server schedules from.
    plan TEXT,
    -- Why the pipeline could not be planned (configuration errors), if so.
    error_message TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, iid)
);
CREATE INDEX pipelines_project_ref ON pipelines(project_id, ref_name, id);
CREATE INDEX pipelines_status ON pipelines(status);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pipeline_id BIGINT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    -- Index of the job in the pipeline's plan; retries share it.
    plan_index BIGINT NOT NULL,
    name TEXT NOT NULL,
    stage TEXT NOT NULL,
    stage_index BIGINT NOT NULL,
    status TEXT NOT NULL,
    job_when TEXT NOT NULL,
    allow_failure BIGINT NOT NULL,
    interruptible BIGINT NOT NULL,
    -- Runner tags the job asks for (JSON array of strings).
    tags TEXT NOT NULL DEFAULT '[]',
    attempt BIGINT NOT NULL DEFAULT 1,
    retry_of BIGINT REFERENCES jobs(id) ON DELETE SET NULL,
    -- 1 once a newer attempt replaced this job (GitLab's `retried`).
    retried BIGINT NOT NULL DEFAULT 0,
    exit_code BIGINT,
    failure_reason TEXT,
    -- Variables given when a manual job was played: [{"key":..,"value":..}].
    variables TEXT NOT NULL DEFAULT '[]',
    triggered_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    queued_at BIGINT,
    scheduled_at BIGINT,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL,
    -- The queue: who holds the job (a server or an agent), under which lease.
    lease_holder TEXT,
    lease_token TEXT,
    lease_expires_at BIGINT,
    executor TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    log_size BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX jobs_pipeline ON jobs(pipeline_id, plan_index);
CREATE INDEX jobs_queue ON jobs(status, queued_at, id);
CREATE INDEX jobs_lease ON jobs(lease_holder);

-- Job logs as appended chunks; [start_offset, end_offset) in the job's byte stream.
CREATE TABLE job_log_chunks (
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    start_offset BIGINT NOT NULL,
    end_offset BIGINT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (job_id, start_offset)
);
CREATE INDEX job_log_chunks_end ON job_log_chunks(job_id, end_offset);

CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id BIGINT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    pipeline_id BIGINT NOT NULL REFERENCES pipelines(id) ON DELETE CASCADE,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    -- `archive` for artifacts:paths, or a report type (`junit`, `dotenv`, ...).
    file_type TEXT NOT NULL,
    name TEXT NOT NULL,
    -- The artifact's id in the runner's content-addressed store.
    store_id TEXT NOT NULL,
    size BIGINT NOT NULL,
    expire_at BIGINT,
    -- Pinned (for example by a deployment that may roll back to it): never expires.
    keep BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
CREATE INDEX artifacts_job ON artifacts(job_id);
CREATE INDEX artifacts_pipeline ON artifacts(pipeline_id);
CREATE INDEX artifacts_expiry ON artifacts(keep, expire_at);

-- Append-only, hash-chained audit log (see ARCHITECTURE.md, "audit chain").
CREATE TABLE audit_log (
    seq BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    actor_id BIGINT,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target_type TEXT NOT NULL,
    target_id TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
);

-- The chain's head (one row), signed with a key the database does not hold.
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY,
    seq BIGINT NOT NULL,
    hash TEXT NOT NULL,
    mac TEXT NOT NULL
);
INSERT INTO audit_head (id, seq, hash, mac)
VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', '');
