//! Environment definitions kept in the repository: the hidden `.slipway` key of
//! `.gitlab-ci.yml` (GitLab ignores keys that start with a dot, so the file stays valid
//! for GitLab, and includes, anchors and `!reference` work as for jobs). It says, per
//! environment: tier, URL, deployment target, strategy, health check, promotion rule and
//! which refs deploy there. Errors name the keyword path and the place in the file, like
//! the pipeline model's.
//!
//! ```yaml
//! .slipway:
//!   environments:
//!     production:
//!       tier: production
//!       url: https://shop.example.com
//!       target: process
//!       process: { command: ./server --port $PORT, instances: 2, listen: 127.0.0.1:8080 }
//!       strategy: { blue-green: { keep_warm: 10m } }
//!       health_check: { path: /healthz, status: 200, success_threshold: 2 }
//!       promotion: { from: staging }
//!       deploy_on: { tags: ["v*"] }
//! ```

use crate::config::a_type;
use crate::diag::Diagnostics;
use crate::duration::parse_seconds;
use crate::source::Span;
use crate::yaml::{Map, Node, Value};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The top-level key that holds Slipway's deployment settings.
pub const SETTINGS_KEY: &str = ".slipway";
/// Most instances one environment may ask for (a typo like `instances: 1000` would
/// otherwise start a thousand processes).
pub const MAX_INSTANCES: u32 = 64;

/// Everything `.slipway` says. Empty when the key is absent.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeploySettings {
    /// In file order.
    pub environments: Vec<EnvironmentDef>,
}

impl DeploySettings {
    pub fn environment(&self, name: &str) -> Option<&EnvironmentDef> {
        self.environments.iter().find(|e| e.name == name)
    }

    /// The environments a pipeline for `git_ref` deploys to by the `deploy_on` mapping,
    /// with how (automatically or on a click). `tag` says whether the ref is a tag.
    pub fn environments_for_ref(&self, git_ref: &str, tag: bool) -> Vec<(&EnvironmentDef, When)> {
        self.environments
            .iter()
            .filter_map(|e| {
                let on = e.deploy_on.as_ref()?;
                on.matches(git_ref, tag).then_some((e, on.when))
            })
            .collect()
    }
}

/// One environment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentDef {
    pub name: String,
    pub tier: Tier,
    /// Where users reach it (shown on the environment page; GitLab's `environment:url`).
    pub url: Option<String>,
    pub target: Target,
    pub strategy: Strategy,
    pub health_check: HealthCheck,
    pub promotion: Option<Promotion>,
    pub deploy_on: Option<DeployOn>,
    #[serde(skip)]
    pub span: Span,
}

/// GitLab's deployment tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    Production,
    Staging,
    Testing,
    Development,
    Other,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Production => "production",
            Tier::Staging => "staging",
            Tier::Testing => "testing",
            Tier::Development => "development",
            Tier::Other => "other",
        }
    }

    fn parse(s: &str) -> Option<Tier> {
        Some(match s {
            "production" => Tier::Production,
            "staging" => Tier::Staging,
            "testing" => Tier::Testing,
            "development" => Tier::Development,
            "other" => Tier::Other,
            _ => return None,
        })
    }

    /// The tier GitLab guesses from an environment's name when none is given.
    pub fn guess(name: &str) -> Tier {
        let n = name.to_ascii_lowercase();
        let has = |words: &[&str]| words.iter().any(|w| n.contains(w));
        if has(&["prod", "live"]) {
            Tier::Production
        } else if has(&["stag", "model", "demo"]) {
            Tier::Staging
        } else if has(&["test", "qc", "qa"]) {
            Tier::Testing
        } else if has(&["dev", "review", "trunk"]) {
            Tier::Development
        } else {
            Tier::Other
        }
    }
}

/// Where a release runs. Only `process` exists today; `container`, `ecs` and `script`
/// are recognised names, reported as not available yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Process(ProcessTarget),
}

/// Target names the parser knows will come; they are refused with a clear message.
const FUTURE_TARGETS: &[&str] = &["container", "ecs", "script"];

/// The embedded target: the artifact run as supervised local processes behind Slipway's
/// router.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessTarget {
    /// Shell command run in the extracted artifact, with `$PORT` set to a free port.
    pub command: String,
    pub instances: u32,
    /// The router's address for this environment; the server picks one when absent.
    pub listen: Option<SocketAddr>,
    /// Milliseconds between SIGTERM and SIGKILL when an instance is stopped.
    pub stop_grace_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Stop the old release, then start the new one (downtime in between).
    Recreate,
    /// Start the new release beside the old one, check it, switch all traffic at once,
    /// keep the old one running for `keep_warm_ms` so a rollback is a switch back.
    BlueGreen {
        keep_warm_ms: u64,
        /// Checks against the new release's instances after they are healthy and before
        /// any traffic moves.
        pre_switch_checks: Vec<HttpCheck>,
    },
    /// Replace instances a few at a time, within the surge and unavailability budgets.
    Rolling {
        max_surge: Amount,
        max_unavailable: Amount,
    },
    /// Start the new release beside the old one and move traffic by weight steps.
    Canary {
        steps: Vec<CanaryStep>,
        keep_warm_ms: u64,
    },
}

impl Strategy {
    pub fn name(&self) -> &'static str {
        match self {
            Strategy::Recreate => "recreate",
            Strategy::BlueGreen { .. } => "blue-green",
            Strategy::Rolling { .. } => "rolling",
            Strategy::Canary { .. } => "canary",
        }
    }

    /// Kubernetes' rolling defaults: 25 % surge (rounded up), 25 % unavailable (rounded
    /// down), so one instance is replaced with no downtime.
    pub fn default_rolling() -> Strategy {
        Strategy::Rolling {
            max_surge: Amount::Percent(25),
            max_unavailable: Amount::Percent(25),
        }
    }
}

/// How long the old release stays warm after a blue-green switch when not given.
pub const DEFAULT_KEEP_WARM_MS: u64 = 5 * 60 * 1000;

/// A number of instances, absolute or as a percentage of the desired count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Amount {
    Count(u32),
    Percent(u32),
}

impl Amount {
    /// The absolute value for `of` instances; percentages round up for surge and down for
    /// unavailability, as Kubernetes does.
    pub fn resolve(self, of: u32, round_up: bool) -> u32 {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => {
                let x = u64::from(of) * u64::from(p);
                let v = if round_up { x.div_ceil(100) } else { x / 100 };
                u32::try_from(v).unwrap_or(u32::MAX)
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryStep {
    /// Send this percentage of requests to the new release.
    Weight(u8),
    /// Wait this many milliseconds; `None` waits until someone promotes the deployment.
    Pause(Option<u64>),
}

/// A single HTTP request and the status it must answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    pub path: String,
    /// Expected status; `None` accepts any 2xx.
    pub status: Option<u16>,
}

impl HttpCheck {
    pub fn accepts(&self, status: u16) -> bool {
        match self.status {
            Some(s) => s == status,
            None => (200..300).contains(&status),
        }
    }
}

/// How an instance is judged ready and alive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    pub check: HttpCheck,
    pub timeout_ms: u64,
    pub interval_ms: u64,
    /// Consecutive successes before an instance counts as ready.
    pub success_threshold: u32,
    /// Consecutive failures (a wrong status, a timeout, a crash; not "connection refused"
    /// while the process is still starting) that fail the instance.
    pub failure_threshold: u32,
    /// How long an instance has to become ready.
    pub start_timeout_ms: u64,
}

impl Default for HealthCheck {
    fn default() -> HealthCheck {
        HealthCheck {
            check: HttpCheck {
                path: "/".into(),
                status: None,
            },
            timeout_ms: 2_000,
            interval_ms: 1_000,
            success_threshold: 1,
            failure_threshold: 3,
            start_timeout_ms: 60_000,
        }
    }
}

/// Only an artifact digest already deployed successfully to `from` may be deployed here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promotion {
    pub from: String,
}

impl Promotion {
    /// Whether `digest` may be deployed, given the digests deployed successfully to the
    /// `from` environment (the server's deployment history).
    pub fn allows<'a>(
        &self,
        digest: &str,
        deployed_to_from: impl IntoIterator<Item = &'a str>,
    ) -> bool {
        deployed_to_from.into_iter().any(|d| d == digest)
    }

    /// The refusal a user sees when [`Promotion::allows`] says no.
    pub fn refusal(&self, environment: &str, digest: &str) -> String {
        format!(
            "environment {environment} only takes artifacts deployed successfully to {}; {digest} never was",
            self.from
        )
    }
}

/// Whether a deployment starts by itself or waits for a click.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum When {
    OnSuccess,
    Manual,
}

/// Which refs deploy to an environment (glob patterns: `release/*`, `v*`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployOn {
    pub branches: Vec<String>,
    pub tags: Vec<String>,
    pub when: When,
}

impl DeployOn {
    pub fn matches(&self, git_ref: &str, tag: bool) -> bool {
        let patterns = if tag { &self.tags } else { &self.branches };
        patterns.iter().any(|p| ref_glob_matches(p, git_ref))
    }
}

/// `*` matches any run of characters, `/` included (GitLab's protected-branch wildcards);
/// everything else is literal.
pub fn ref_glob_matches(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// Milliseconds in a duration: GitLab's forms (`10s`, `1h 30m`, `42`) plus `ms`
/// (`500ms`), which health checks need.
pub fn parse_millis(text: &str) -> Option<u64> {
    let t = text.trim();
    if let Some(n) = t.strip_suffix("ms") {
        return n.trim().parse().ok();
    }
    parse_seconds(t)?.checked_mul(1000)
}

/// Read `.slipway` from a resolved pipeline tree (the `tree` of
/// [`crate::load_pipeline`]). No `.slipway` key means no settings.
pub fn parse_settings(root: &Node) -> Result<DeploySettings, Diagnostics> {
    let mut c = Checker::default();
    let mut settings = DeploySettings::default();
    if let Some(node) = root.as_map().and_then(|m| m.get(SETTINGS_KEY)) {
        settings = c.settings(node);
    }
    if c.diags.is_empty() {
        Ok(settings)
    } else {
        Err(c.diags.sorted())
    }
}

#[derive(Default)]
struct Checker {
    diags: Diagnostics,
}

impl Checker {
    fn err(&mut self, span: Span, msg: impl Into<String>) {
        self.diags.push(span, msg);
    }

    fn map<'n>(&mut self, node: &'n Node, path: &str) -> Option<&'n Map> {
        match &node.value {
            Value::Map(m) => Some(m),
            _ => {
                self.err(
                    node.span,
                    format!("{path} config should be a hash, not {}", a_type(node)),
                );
                None
            }
        }
    }

    fn unknown_keys(&mut self, map: &Map, allowed: &[&str], path: &str) {
        for (k, _) in map.iter() {
            if !allowed.contains(&k.name.as_str()) {
                self.err(
                    k.span,
                    format!(
                        "{path} config contains unknown key: {} (known: {})",
                        k.name,
                        allowed.join(", ")
                    ),
                );
            }
        }
    }

    fn string(&mut self, node: &Node, path: &str) -> Option<String> {
        match &node.value {
            Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
            Value::String(_) => {
                self.err(node.span, format!("{path} can't be blank"));
                None
            }
            _ => {
                self.err(
                    node.span,
                    format!("{path} config should be a string, not {}", a_type(node)),
                );
                None
            }
        }
    }

    fn strings(&mut self, node: &Node, path: &str) -> Vec<String> {
        match &node.value {
            Value::String(s) => vec![s.clone()],
            Value::Seq(items) => items.iter().filter_map(|i| self.string(i, path)).collect(),
            _ => {
                self.err(
                    node.span,
                    format!("{path} config should be a string or an array of strings"),
                );
                Vec::new()
            }
        }
    }

    /// An integer in `min..=max`.
    fn int(&mut self, node: &Node, path: &str, min: u64, max: u64) -> Option<u64> {
        match node.value {
            Value::Int(i) if i >= 0 && (min..=max).contains(&(i as u64)) => Some(i as u64),
            Value::Int(_) => {
                self.err(
                    node.span,
                    format!("{path} should be between {min} and {max}"),
                );
                None
            }
            _ => {
                self.err(
                    node.span,
                    format!("{path} config should be an integer, not {}", a_type(node)),
                );
                None
            }
        }
    }

    fn millis(&mut self, node: &Node, path: &str) -> Option<u64> {
        let parsed = match &node.value {
            Value::String(s) => parse_millis(s),
            Value::Int(i) if *i >= 0 => (*i as u64).checked_mul(1000),
            _ => None,
        };
        if parsed.is_none() {
            self.err(
                node.span,
                format!("{path} should be a duration (like 500ms, 10s or 5m)"),
            );
        }
        parsed
    }

    /// A positive duration.
    fn positive_millis(&mut self, node: &Node, path: &str) -> Option<u64> {
        let v = self.millis(node, path)?;
        if v == 0 {
            self.err(node.span, format!("{path} must be longer than zero"));
            return None;
        }
        Some(v)
    }

    fn settings(&mut self, node: &Node) -> DeploySettings {
        let mut out = DeploySettings::default();
        let Some(map) = self.map(node, SETTINGS_KEY) else {
            return out;
        };
        self.unknown_keys(map, &["environments"], SETTINGS_KEY);
        let Some(envs) = map.get("environments") else {
            return out;
        };
        let path = format!("{SETTINGS_KEY}:environments");
        if envs.is_null() {
            return out;
        }
        let Some(envs) = self.map(envs, &path) else {
            return out;
        };
        for (key, node) in envs.iter() {
            if key.name.trim().is_empty() {
                self.err(key.span, format!("{path} environment name can't be blank"));
                continue;
            }
            if let Some(env) =
                self.environment(&key.name, key.span, node, &format!("{path}:{}", key.name))
            {
                out.environments.push(env);
            }
        }
        self.cross_checks(&out, envs);
        out
    }

    fn environment(
        &mut self,
        name: &str,
        span: Span,
        node: &Node,
        path: &str,
    ) -> Option<EnvironmentDef> {
        let empty = Map::default();
        let map = if node.is_null() {
            &empty
        } else {
            self.map(node, path)?
        };
        self.unknown_keys(
            map,
            &[
                "tier",
                "url",
                "target",
                "process",
                "strategy",
                "health_check",
                "promotion",
                "deploy_on",
            ],
            path,
        );
        let tier = match map.get("tier") {
            Some(t) => match t.as_str().and_then(Tier::parse) {
                Some(t) => t,
                None => {
                    self.err(
                        t.span,
                        format!("{path}:tier must be one of production, staging, testing, development, other"),
                    );
                    Tier::Other
                }
            },
            None => Tier::guess(name),
        };
        let url = map
            .get("url")
            .and_then(|u| self.string(u, &format!("{path}:url")));
        let target = self.target(map, node.span, path)?;
        let strategy = match map.get("strategy") {
            Some(s) => self.strategy(s, &format!("{path}:strategy"))?,
            None => Strategy::default_rolling(),
        };
        let health_check = match map.get("health_check") {
            Some(h) => self.health_check(h, &format!("{path}:health_check"))?,
            None => HealthCheck::default(),
        };
        let promotion = match map.get("promotion") {
            Some(p) => self.promotion(p, &format!("{path}:promotion")),
            None => None,
        };
        let deploy_on = match map.get("deploy_on") {
            Some(d) => self.deploy_on(d, &format!("{path}:deploy_on")),
            None => None,
        };
        Some(EnvironmentDef {
            name: name.to_string(),
            tier,
            url,
            target,
            strategy,
            health_check,
            promotion,
            deploy_on,
            span,
        })
    }

    fn target(&mut self, map: &Map, env_span: Span, path: &str) -> Option<Target> {
        let kind = match map.get("target") {
            Some(t) => {
                match t.as_str() {
                    Some("process") => "process",
                    Some(k) if FUTURE_TARGETS.contains(&k) => {
                        self.err(
                            t.span,
                            format!("{path}:target {k} is not available yet; use process"),
                        );
                        return None;
                    }
                    _ => {
                        self.err(t.span, format!("{path}:target must be process (container, ecs and script are planned)"));
                        return None;
                    }
                }
            }
            None => "process",
        };
        debug_assert_eq!(kind, "process");
        let ppath = format!("{path}:process");
        let Some(pnode) = map.get("process") else {
            self.err(
                env_span,
                format!("{ppath} is required for the process target (at least `command`)"),
            );
            return None;
        };
        let pmap = self.map(pnode, &ppath)?;
        self.unknown_keys(
            pmap,
            &["command", "instances", "listen", "stop_grace"],
            &ppath,
        );
        let command = match pmap.get("command") {
            Some(c) => self.string(c, &format!("{ppath}:command")),
            None => {
                self.err(pnode.span, format!("{ppath}:command is required"));
                None
            }
        };
        let instances = match pmap.get("instances") {
            Some(n) => self
                .int(
                    n,
                    &format!("{ppath}:instances"),
                    1,
                    u64::from(MAX_INSTANCES),
                )
                .map(|n| n as u32),
            None => Some(1),
        };
        let listen = match pmap.get("listen") {
            Some(l) => match l.as_str().map(|s| s.parse::<SocketAddr>()) {
                Some(Ok(a)) => Some(a),
                _ => {
                    self.err(
                        l.span,
                        format!("{ppath}:listen should be an address like 127.0.0.1:8080"),
                    );
                    None
                }
            },
            None => None,
        };
        let stop_grace_ms = match pmap.get("stop_grace") {
            Some(g) => self.millis(g, &format!("{ppath}:stop_grace")),
            None => Some(10_000),
        };
        Some(Target::Process(ProcessTarget {
            command: command?,
            instances: instances?,
            listen,
            stop_grace_ms: stop_grace_ms?,
        }))
    }

    fn strategy(&mut self, node: &Node, path: &str) -> Option<Strategy> {
        let (name, body, name_span) = match &node.value {
            Value::String(s) => (s.as_str(), None, node.span),
            Value::Map(m) if m.len() == 1 => {
                let (k, v) = m.iter().next()?;
                (k.name.as_str(), Some(v), k.span)
            }
            _ => {
                self.err(
                    node.span,
                    format!("{path} should be a strategy name or a hash with one key: recreate, blue-green, rolling or canary"),
                );
                return None;
            }
        };
        let spath = format!("{path}:{name}");
        let empty = Map::default();
        let body = match body {
            Some(b) if !b.is_null() => self.map(b, &spath)?,
            _ => &empty,
        };
        match name {
            "recreate" => {
                self.unknown_keys(body, &[], &spath);
                Some(Strategy::Recreate)
            }
            "blue-green" => {
                self.unknown_keys(body, &["keep_warm", "pre_switch_checks"], &spath);
                let keep_warm_ms = match body.get("keep_warm") {
                    Some(k) => self.millis(k, &format!("{spath}:keep_warm"))?,
                    None => DEFAULT_KEEP_WARM_MS,
                };
                let mut pre_switch_checks = Vec::new();
                if let Some(list) = body.get("pre_switch_checks") {
                    let cpath = format!("{spath}:pre_switch_checks");
                    match list.as_seq() {
                        Some(items) => {
                            for item in items {
                                if let Some(c) = self.http_check(item, &cpath) {
                                    pre_switch_checks.push(c);
                                }
                            }
                        }
                        None => self.err(
                            list.span,
                            format!("{cpath} config should be an array of checks"),
                        ),
                    }
                }
                Some(Strategy::BlueGreen {
                    keep_warm_ms,
                    pre_switch_checks,
                })
            }
            "rolling" => {
                self.unknown_keys(body, &["max_surge", "max_unavailable"], &spath);
                let amount = |c: &mut Checker, key: &str| -> Option<Amount> {
                    match body.get(key) {
                        Some(n) => c.amount(n, &format!("{spath}:{key}")),
                        None => Some(Amount::Percent(25)),
                    }
                };
                let max_surge = amount(self, "max_surge")?;
                let max_unavailable = amount(self, "max_unavailable")?;
                if max_surge.resolve(1, true) == 0 && max_unavailable.resolve(u32::MAX, false) == 0
                {
                    self.err(
                        name_span,
                        format!("{spath}: max_surge and max_unavailable can't both be zero"),
                    );
                    return None;
                }
                Some(Strategy::Rolling {
                    max_surge,
                    max_unavailable,
                })
            }
            "canary" => {
                self.unknown_keys(body, &["steps", "keep_warm"], &spath);
                let keep_warm_ms = match body.get("keep_warm") {
                    Some(k) => self.millis(k, &format!("{spath}:keep_warm"))?,
                    None => DEFAULT_KEEP_WARM_MS,
                };
                let steps =
                    self.canary_steps(body.get("steps"), name_span, &format!("{spath}:steps"))?;
                Some(Strategy::Canary {
                    steps,
                    keep_warm_ms,
                })
            }
            other => {
                self.err(
                    name_span,
                    format!(
                        "{path} {other} is unknown: use recreate, blue-green, rolling or canary"
                    ),
                );
                None
            }
        }
    }

    fn amount(&mut self, node: &Node, path: &str) -> Option<Amount> {
        let parsed = match &node.value {
            Value::Int(i) if *i >= 0 && *i <= i64::from(MAX_INSTANCES) => {
                Some(Amount::Count(*i as u32))
            }
            Value::String(s) => s
                .trim()
                .strip_suffix('%')
                .and_then(|p| p.trim().parse::<u32>().ok())
                .filter(|p| *p <= 100)
                .map(Amount::Percent),
            _ => None,
        };
        if parsed.is_none() {
            self.err(
                node.span,
                format!("{path} should be a number of instances (0 to {MAX_INSTANCES}) or a percentage like 25%"),
            );
        }
        parsed
    }

    fn canary_steps(
        &mut self,
        node: Option<&Node>,
        span: Span,
        path: &str,
    ) -> Option<Vec<CanaryStep>> {
        let Some(node) = node else {
            self.err(
                span,
                format!("{path} is required (for example [{{weight: 10}}, {{pause: 5m}}])"),
            );
            return None;
        };
        let Some(items) = node.as_seq() else {
            self.err(
                node.span,
                format!("{path} config should be an array of steps"),
            );
            return None;
        };
        let mut steps = Vec::new();
        let mut last_weight = 0u8;
        let mut ok = true;
        for item in items {
            let Some(m) = item.as_map().filter(|m| m.len() == 1) else {
                self.err(
                    item.span,
                    format!("{path} each step should be a hash with one key: weight or pause"),
                );
                ok = false;
                continue;
            };
            let Some((k, v)) = m.iter().next() else {
                continue;
            };
            match k.name.as_str() {
                "weight" => {
                    match v.value {
                        Value::Int(w) if (1..=100).contains(&w) => {
                            let w = w as u8;
                            if w < last_weight {
                                self.err(v.span, format!("{path} weights should not decrease ({w} after {last_weight})"));
                                ok = false;
                            }
                            last_weight = w;
                            steps.push(CanaryStep::Weight(w));
                        }
                        _ => {
                            self.err(
                                v.span,
                                format!("{path}:weight should be a percentage from 1 to 100"),
                            );
                            ok = false;
                        }
                    }
                }
                "pause" => {
                    if v.as_str() == Some("manual") {
                        steps.push(CanaryStep::Pause(None));
                    } else {
                        match self.millis(v, &format!("{path}:pause")) {
                            Some(ms) => steps.push(CanaryStep::Pause(Some(ms))),
                            None => ok = false,
                        }
                    }
                }
                other => {
                    self.err(
                        k.span,
                        format!("{path} step {other} is unknown: use weight or pause"),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(steps)
    }

    fn http_check(&mut self, node: &Node, path: &str) -> Option<HttpCheck> {
        let map = self.map(node, path)?;
        self.unknown_keys(map, &["path", "status"], path);
        self.http_check_fields(map, node.span, path)
    }

    fn http_check_fields(&mut self, map: &Map, span: Span, path: &str) -> Option<HttpCheck> {
        let check_path = match map.get("path") {
            Some(p) => {
                let s = self.string(p, &format!("{path}:path"))?;
                if !s.starts_with('/') {
                    self.err(p.span, format!("{path}:path should start with /"));
                    return None;
                }
                s
            }
            None => {
                self.err(span, format!("{path}:path is required"));
                return None;
            }
        };
        let status = match map.get("status") {
            Some(s) => Some(self.int(s, &format!("{path}:status"), 100, 599)? as u16),
            None => None,
        };
        Some(HttpCheck {
            path: check_path,
            status,
        })
    }

    fn health_check(&mut self, node: &Node, path: &str) -> Option<HealthCheck> {
        let map = self.map(node, path)?;
        self.unknown_keys(
            map,
            &[
                "path",
                "status",
                "timeout",
                "interval",
                "success_threshold",
                "failure_threshold",
                "start_timeout",
            ],
            path,
        );
        let d = HealthCheck::default();
        let check = self.http_check_fields(map, node.span, path);
        let ms = |c: &mut Checker, key: &str, default: u64| match map.get(key) {
            Some(n) => c.positive_millis(n, &format!("{path}:{key}")),
            None => Some(default),
        };
        let timeout_ms = ms(self, "timeout", d.timeout_ms);
        let interval_ms = ms(self, "interval", d.interval_ms);
        let start_timeout_ms = ms(self, "start_timeout", d.start_timeout_ms);
        let count = |c: &mut Checker, key: &str, default: u32| match map.get(key) {
            Some(n) => c.int(n, &format!("{path}:{key}"), 1, 100).map(|n| n as u32),
            None => Some(default),
        };
        let success_threshold = count(self, "success_threshold", d.success_threshold);
        let failure_threshold = count(self, "failure_threshold", d.failure_threshold);
        Some(HealthCheck {
            check: check?,
            timeout_ms: timeout_ms?,
            interval_ms: interval_ms?,
            success_threshold: success_threshold?,
            failure_threshold: failure_threshold?,
            start_timeout_ms: start_timeout_ms?,
        })
    }

    fn promotion(&mut self, node: &Node, path: &str) -> Option<Promotion> {
        let map = self.map(node, path)?;
        self.unknown_keys(map, &["from"], path);
        match map.get("from") {
            Some(f) => Some(Promotion {
                from: self.string(f, &format!("{path}:from"))?,
            }),
            None => {
                self.err(node.span, format!("{path}:from is required"));
                None
            }
        }
    }

    fn deploy_on(&mut self, node: &Node, path: &str) -> Option<DeployOn> {
        let map = self.map(node, path)?;
        self.unknown_keys(map, &["branches", "tags", "when"], path);
        let branches = map
            .get("branches")
            .map(|b| self.strings(b, &format!("{path}:branches")))
            .unwrap_or_default();
        let tags = map
            .get("tags")
            .map(|t| self.strings(t, &format!("{path}:tags")))
            .unwrap_or_default();
        let when = match map.get("when") {
            Some(w) => match w.as_str() {
                Some("on_success") => When::OnSuccess,
                Some("manual") => When::Manual,
                _ => {
                    self.err(
                        w.span,
                        format!("{path}:when should be on_success or manual"),
                    );
                    return None;
                }
            },
            None => When::OnSuccess,
        };
        if branches.is_empty() && tags.is_empty() {
            self.err(node.span, format!("{path} needs branches or tags"));
            return None;
        }
        Some(DeployOn {
            branches,
            tags,
            when,
        })
    }

    /// Checks across environments: promotion sources exist and form no cycle, router
    /// addresses are not shared.
    fn cross_checks(&mut self, settings: &DeploySettings, envs: &Map) {
        let span_of = |name: &str, key: &str| -> Span {
            envs.get(name)
                .and_then(|n| n.as_map())
                .and_then(|m| m.get(key))
                .map(|n| n.span)
                .unwrap_or_default()
        };
        for env in &settings.environments {
            let Some(p) = &env.promotion else { continue };
            let path = format!("{SETTINGS_KEY}:environments:{}:promotion:from", env.name);
            if p.from == env.name {
                self.err(
                    span_of(&env.name, "promotion"),
                    format!("{path} can't name the environment itself"),
                );
            } else if settings.environment(&p.from).is_none() {
                self.err(
                    span_of(&env.name, "promotion"),
                    format!(
                        "{path} names {}, which is not defined under {SETTINGS_KEY}:environments",
                        p.from
                    ),
                );
            } else {
                // Walk the chain: a cycle would make every environment in it undeployable.
                let mut seen = vec![env.name.as_str()];
                let mut cur = p.from.as_str();
                while let Some(next) = settings.environment(cur).and_then(|e| e.promotion.as_ref())
                {
                    if seen.contains(&cur) {
                        break;
                    }
                    seen.push(cur);
                    if next.from == env.name {
                        self.err(
                            span_of(&env.name, "promotion"),
                            format!(
                                "{path} forms a cycle: {} -> {}",
                                seen.join(" -> "),
                                env.name
                            ),
                        );
                        break;
                    }
                    cur = next.from.as_str();
                }
            }
        }
        let mut listens: Vec<(SocketAddr, &str)> = Vec::new();
        for env in &settings.environments {
            let Target::Process(p) = &env.target;
            let Some(addr) = p.listen else { continue };
            if let Some((_, other)) = listens.iter().find(|(a, _)| *a == addr) {
                self.err(
                    span_of(&env.name, "process"),
                    format!(
                        "{SETTINGS_KEY}:environments:{}:process:listen {addr} is already used by {other}",
                        env.name
                    ),
                );
            } else {
                listens.push((addr, &env.name));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::MemoryLoader;

    fn parse(text: &str) -> Result<DeploySettings, String> {
        let loader = MemoryLoader::new().with(".gitlab-ci.yml", text);
        let loaded = crate::load_pipeline(&loader, ".gitlab-ci.yml", &|_| None);
        let tree = match (&loaded.tree, &loaded.pipeline) {
            (Some(t), Ok(_)) => t,
            (_, Err(d)) => return Err(format!("pipeline: {}", d.render(&loaded.sources))),
            (None, Ok(_)) => return Err("no tree".into()),
        };
        parse_settings(tree).map_err(|d| d.render(&loaded.sources))
    }

    const JOB: &str = "build:\n  script: [make]\n";

    #[test]
    fn full_example() {
        let text = format!(
            "{JOB}.slipway:
  environments:
    dev:
      process: {{command: ./server --port $PORT}}
      strategy: recreate
      deploy_on: {{branches: [main]}}
    staging:
      url: https://staging.example.com
      process:
        command: ./server
        instances: 2
        listen: 127.0.0.1:8081
        stop_grace: 3s
      strategy:
        blue-green:
          keep_warm: 10m
          pre_switch_checks:
            - {{path: /smoke, status: 204}}
      health_check:
        path: /healthz
        status: 200
        timeout: 500ms
        interval: 250ms
        success_threshold: 2
        failure_threshold: 5
        start_timeout: 30s
      deploy_on: {{branches: ['release/*'], when: manual}}
    production:
      tier: production
      process: {{command: ./server, instances: 4}}
      strategy:
        rolling: {{max_surge: 1, max_unavailable: 25%}}
      promotion: {{from: staging}}
      deploy_on: {{tags: ['v*']}}
    canary-prod:
      process: {{command: ./server}}
      strategy:
        canary:
          steps: [{{weight: 10}}, {{pause: 5m}}, {{weight: 50}}, {{pause: manual}}]
"
        );
        let s = parse(&text).expect("valid");
        assert_eq!(s.environments.len(), 4);
        let dev = s.environment("dev").expect("dev");
        assert_eq!(dev.tier, Tier::Development);
        assert_eq!(dev.strategy, Strategy::Recreate);
        assert_eq!(dev.health_check, HealthCheck::default());
        let staging = s.environment("staging").expect("staging");
        assert_eq!(staging.tier, Tier::Staging);
        assert_eq!(staging.url.as_deref(), Some("https://staging.example.com"));
        let Target::Process(p) = &staging.target;
        assert_eq!(p.instances, 2);
        assert_eq!(p.listen, "127.0.0.1:8081".parse().ok());
        assert_eq!(p.stop_grace_ms, 3000);
        assert_eq!(
            staging.strategy,
            Strategy::BlueGreen {
                keep_warm_ms: 600_000,
                pre_switch_checks: vec![HttpCheck {
                    path: "/smoke".into(),
                    status: Some(204)
                }]
            }
        );
        assert_eq!(
            staging.health_check,
            HealthCheck {
                check: HttpCheck {
                    path: "/healthz".into(),
                    status: Some(200)
                },
                timeout_ms: 500,
                interval_ms: 250,
                success_threshold: 2,
                failure_threshold: 5,
                start_timeout_ms: 30_000,
            }
        );
        let prod = s.environment("production").expect("production");
        assert_eq!(
            prod.strategy,
            Strategy::Rolling {
                max_surge: Amount::Count(1),
                max_unavailable: Amount::Percent(25)
            }
        );
        assert_eq!(
            prod.promotion,
            Some(Promotion {
                from: "staging".into()
            })
        );
        let canary = s.environment("canary-prod").expect("canary");
        assert_eq!(
            canary.strategy,
            Strategy::Canary {
                steps: vec![
                    CanaryStep::Weight(10),
                    CanaryStep::Pause(Some(300_000)),
                    CanaryStep::Weight(50),
                    CanaryStep::Pause(None)
                ],
                keep_warm_ms: DEFAULT_KEEP_WARM_MS
            }
        );

        // Branch and tag mapping.
        let names = |r: &str, tag: bool| -> Vec<(String, When)> {
            s.environments_for_ref(r, tag)
                .into_iter()
                .map(|(e, w)| (e.name.clone(), w))
                .collect()
        };
        assert_eq!(
            names("main", false),
            vec![("dev".to_string(), When::OnSuccess)]
        );
        assert_eq!(
            names("release/1.2", false),
            vec![("staging".to_string(), When::Manual)]
        );
        assert_eq!(
            names("v1.2.0", true),
            vec![("production".to_string(), When::OnSuccess)]
        );
        assert!(
            names("v1.2.0", false).is_empty(),
            "a branch named like a tag is not a tag"
        );
        assert!(names("feature/x", false).is_empty());
    }

    #[test]
    fn absent_key_means_no_environments() {
        assert_eq!(parse(JOB).expect("valid"), DeploySettings::default());
    }

    #[test]
    fn anchors_and_includes_work_like_jobs() {
        let loader = MemoryLoader::new()
            .with(
                ".gitlab-ci.yml",
                "include: ci/envs.yml\nbuild:\n  script: [make]\n",
            )
            .with(
                "ci/envs.yml",
                ".proc: &proc {command: ./server, instances: 2}\n.slipway:\n  environments:\n    dev: {process: *proc}\n",
            );
        let loaded = crate::load_pipeline(&loader, ".gitlab-ci.yml", &|_| None);
        let tree = loaded.tree.expect("tree");
        let s = parse_settings(&tree).expect("valid");
        let Target::Process(p) = &s.environments[0].target;
        assert_eq!(p.instances, 2);
    }

    fn error_of(body: &str) -> String {
        let text = format!("{JOB}.slipway:\n  environments:\n{body}");
        parse(&text).expect_err("should be invalid")
    }

    #[test]
    fn errors_name_the_place() {
        let e = error_of("    dev:\n      process: {command: ./s}\n      strategy: fast\n");
        assert!(
            e.starts_with(
                ".gitlab-ci.yml:7:17: error: .slipway:environments:dev:strategy fast is unknown"
            ),
            "{e}"
        );
        let e = error_of("    dev:\n      process: {command: ./s, instances: 0}\n");
        assert!(e.contains(".gitlab-ci.yml:6:42: error: .slipway:environments:dev:process:instances should be between 1 and 64"), "{e}");
        let e = error_of("    dev:\n      process: {command: ./s}\n      health_check: {path: /h, timeout: soon}\n");
        assert!(
            e.contains(
                ":7:41: error: .slipway:environments:dev:health_check:timeout should be a duration"
            ),
            "{e}"
        );
        let e = error_of("    dev:\n      process: {command: ./s}\n      colour: blue\n");
        assert!(
            e.contains(
                ":7:7: error: .slipway:environments:dev config contains unknown key: colour"
            ),
            "{e}"
        );
        let e = error_of("    dev:\n      tier: prod\n      process: {command: ./s}\n");
        assert!(
            e.contains(":6:13: error: .slipway:environments:dev:tier must be one of"),
            "{e}"
        );
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let e = error_of(
            "    a:\n      process: {command: ./s}\n      strategy: {rolling: {max_surge: 0, max_unavailable: 0}}\n    b:\n      target: ecs\n    c:\n      process: {}\n",
        );
        assert!(
            e.contains("max_surge and max_unavailable can't both be zero"),
            "{e}"
        );
        assert!(
            e.contains(":9:15: error: .slipway:environments:b:target ecs is not available yet"),
            "{e}"
        );
        assert!(e.contains("c:process:command is required"), "{e}");
    }

    #[test]
    fn promotion_must_name_an_earlier_environment() {
        let e =
            error_of("    prod:\n      process: {command: ./s}\n      promotion: {from: stagin}\n");
        assert!(
            e.contains("promotion:from names stagin, which is not defined"),
            "{e}"
        );
        let e = error_of(
            "    a:\n      process: {command: ./s}\n      promotion: {from: b}\n    b:\n      process: {command: ./s}\n      promotion: {from: a}\n",
        );
        assert!(e.contains("forms a cycle"), "{e}");
        let e = error_of("    a:\n      process: {command: ./s}\n      promotion: {from: a}\n");
        assert!(e.contains("can't name the environment itself"), "{e}");
    }

    #[test]
    fn router_addresses_are_not_shared() {
        let e = error_of(
            "    a:\n      process: {command: ./s, listen: '127.0.0.1:9000'}\n    b:\n      process: {command: ./s, listen: '127.0.0.1:9000'}\n",
        );
        assert!(
            e.contains("b:process:listen 127.0.0.1:9000 is already used by a"),
            "{e}"
        );
    }

    #[test]
    fn canary_steps_are_checked() {
        let e = error_of(
            "    a:\n      process: {command: ./s}\n      strategy: {canary: {steps: [{weight: 50}, {weight: 10}, {pause: x}, {jump: 1}]}}\n",
        );
        assert!(
            e.contains("weights should not decrease (10 after 50)"),
            "{e}"
        );
        assert!(e.contains("steps:pause should be a duration"), "{e}");
        assert!(e.contains("step jump is unknown"), "{e}");
    }

    #[test]
    fn promotion_rule() {
        let p = Promotion {
            from: "staging".into(),
        };
        assert!(p.allows("sha256:aa", ["sha256:bb", "sha256:aa"]));
        assert!(!p.allows("sha256:cc", ["sha256:bb", "sha256:aa"]));
        assert!(p
            .refusal("production", "sha256:cc")
            .contains("deployed successfully to staging"));
    }

    #[test]
    fn globs_and_amounts() {
        assert!(ref_glob_matches("release/*", "release/1.2"));
        assert!(ref_glob_matches("release/*", "release/a/b"));
        assert!(!ref_glob_matches("release/*", "releases/1"));
        assert!(ref_glob_matches("v*", "v1"));
        assert!(ref_glob_matches("*-stable", "2-stable"));
        assert!(ref_glob_matches("a*b*c", "aXbYc"));
        assert!(!ref_glob_matches("a*b*c", "ac"));
        assert!(!ref_glob_matches("ab*ba", "aba"));
        assert!(ref_glob_matches("main", "main"));
        assert_eq!(Amount::Percent(25).resolve(1, true), 1);
        assert_eq!(Amount::Percent(25).resolve(1, false), 0);
        assert_eq!(Amount::Percent(25).resolve(10, false), 2);
        assert_eq!(Amount::Count(3).resolve(10, false), 3);
        assert_eq!(parse_millis("500ms"), Some(500));
        assert_eq!(parse_millis("2s"), Some(2000));
        assert_eq!(parse_millis("1m"), Some(60_000));
        assert_eq!(parse_millis("later"), None);
    }

    #[test]
    fn tiers_are_guessed_like_gitlab() {
        assert_eq!(Tier::guess("production"), Tier::Production);
        assert_eq!(Tier::guess("prod-eu"), Tier::Production);
        assert_eq!(Tier::guess("staging"), Tier::Staging);
        assert_eq!(Tier::guess("qa"), Tier::Testing);
        assert_eq!(Tier::guess("review/feature"), Tier::Development);
        assert_eq!(Tier::guess("sandbox"), Tier::Other);
    }
}
