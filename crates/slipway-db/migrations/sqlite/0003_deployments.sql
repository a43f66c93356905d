-- Issue 5: environments and deployments. Environments per project (what the repository's
-- `.slipway` says plus what the server fixed: the router's address, the engine's
-- intent), protection rules (server settings only: a push cannot weaken them),
-- deployments with their approvals, resource groups with their process mode, and the
-- webhooks deployment notifications go to.

CREATE TABLE environments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    tier TEXT NOT NULL,
    url TEXT,
    -- The router's address (`127.0.0.1:8080`), fixed when first chosen.
    listen TEXT,
    -- The deployment engine's name for it (`project/environment`), stable across renames.
    engine_name TEXT NOT NULL UNIQUE,
    -- The engine's intent record (JSON): what serves, what is warm, the switch in
    -- progress. Saved before the engine acts.
    engine_state TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE protection_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    -- An environment name: the rule may exist before the first deployment.
    environment TEXT NOT NULL,
    required_approvals BIGINT NOT NULL DEFAULT 0,
    allow_self_approval BIGINT NOT NULL DEFAULT 0,
    -- JSON arrays of ref patterns (`main`, `release/*`, `v*`); both empty: any ref.
    allowed_branches TEXT NOT NULL DEFAULT '[]',
    allowed_tags TEXT NOT NULL DEFAULT '[]',
    wait_timer_ms BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    UNIQUE (project_id, environment)
);

-- Who may approve: named users and members of named groups.
CREATE TABLE protection_approvers (
    rule_id BIGINT NOT NULL REFERENCES protection_rules(id) ON DELETE CASCADE,
    user_id BIGINT REFERENCES users(id) ON DELETE CASCADE,
    group_id BIGINT REFERENCES groups(id) ON DELETE CASCADE,
    CHECK ((user_id IS NULL) <> (group_id IS NULL))
);
CREATE INDEX protection_approvers_rule ON protection_approvers(rule_id);

CREATE TABLE deployments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    environment_id BIGINT NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
    pipeline_id BIGINT REFERENCES pipelines(id) ON DELETE SET NULL,
    -- The job attempt that deploys (NULL for a rollback requested by a user).
    job_id BIGINT UNIQUE REFERENCES jobs(id) ON DELETE SET NULL,
    ref_name TEXT NOT NULL,
    tag BIGINT NOT NULL DEFAULT 0,
    sha TEXT NOT NULL,
    -- What users call the release: the tag, or the commit's short SHA.
    version TEXT NOT NULL,
    -- `sha256:...` of the release's manifest (paths, modes, contents).
    digest TEXT,
    -- The artifact store ids the release is made of, in extraction order (JSON array).
    release_artifacts TEXT NOT NULL DEFAULT '[]',
    -- How the engine runs it (the `.slipway` of the deployed commit), JSON; NULL when the
    -- job's script is the deployment (no `.slipway` entry).
    settings TEXT,
    strategy TEXT,
    triggered_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    triggered_by_name TEXT NOT NULL,
    -- created, waiting, awaiting_approval, running, success, failed, canceled,
    -- rolled_back, skipped.
    status TEXT NOT NULL,
    -- The engine's phase (JSON, `{"phase": "health_checking"}`).
    phase TEXT,
    reason TEXT,
    -- The release the engine serves it under (the id of the deployment that started it).
    release_id TEXT,
    -- This deployment brings back that deployment's release.
    rollback_of BIGINT REFERENCES deployments(id) ON DELETE SET NULL,
    -- The deployment's variables (JSON pairs); sealed when any is a secret.
    variables TEXT,
    sealed_variables BLOB,
    -- Microseconds from the request to all traffic on the release.
    switch_us BIGINT,
    -- The protection rule's wait timer ends here.
    wait_until BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX deployments_environment ON deployments(environment_id, id);
CREATE INDEX deployments_digest ON deployments(project_id, digest);

CREATE TABLE deployment_approvals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    deployment_id BIGINT NOT NULL REFERENCES deployments(id) ON DELETE CASCADE,
    user_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    username TEXT NOT NULL,
    -- approved or rejected
    decision TEXT NOT NULL,
    comment TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (deployment_id, user_id)
);

-- GitLab's resource groups: jobs of one group run one at a time, picked by the mode.
CREATE TABLE resource_groups (
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- unordered, oldest_first or newest_first
    process_mode TEXT NOT NULL DEFAULT 'unordered',
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (project_id, name)
);
-- The job's resource group (expanded) and whether the group was given to it.
ALTER TABLE jobs ADD COLUMN resource_group TEXT;
ALTER TABLE jobs ADD COLUMN resource_assigned BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_resource_group ON jobs(project_id, resource_group);

-- Where deployment notifications go: per project, or per environment of it.
CREATE TABLE deployment_webhooks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id BIGINT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    -- NULL: every environment of the project.
    environment TEXT,
    -- slack or json
    kind TEXT NOT NULL,
    -- A Slack URL is itself a credential: sealed, with its origin kept for display.
    sealed_url BLOB NOT NULL,
    url_origin TEXT NOT NULL,
    sealed_secret BLOB,
    created_at BIGINT NOT NULL
);
CREATE INDEX deployment_webhooks_project ON deployment_webhooks(project_id);
