//! Pipeline cases: each file under `tests/cases/` is one pipeline (one or more files) with
//! a trigger context and the expected plan or the expected errors, pinning GitLab's
//! documented behaviour. Every valid case is also checked through `preview`: the expanded
//! YAML must lint and plan to the same jobs.
//!
//! Case format (sections start with a `--- ` line):
//!
//! ```text
//! # what the case pins (free text, lines starting with #)
//! --- .gitlab-ci.yml          a file of the repository (the first one is the pipeline)
//! ...yaml...
//! --- ci/other.yml            more files (includes)
//! --- context                 optional: ref=NAME tag=true source=S var:K=V changed=a,b
//! --- plan                    the expected jobs, one line each:
//! NAME | STAGE | WHEN | allow_failure=BOOL | needs=-|[]|a,b
//! --- plan-variables JOB      optional: KEY=VALUE lines the planned job must carry
//! --- plan-name               optional: the pipeline's name (`workflow:name`), expanded;
//!                             empty when the pipeline has no name
//!                             (`!KEY`: the job must not carry KEY)
//! --- job NAME                optional: `path = value` lines checked against the checked
//!                             job definition NAME serialized as JSON; `path` is dotted
//!                             (`image.name`, `cache.0.key`), `value` is the JSON text
//!                             (strings may be written bare); `missing` for no such field
//! --- errors                  or: expected errors, one per line: LINE:COL: substring
//! --- filtered                or: no pipeline (workflow:rules filtered it out)
//! ```

use slipway_core::plan::{self, NoPipeline, Trigger};
use slipway_core::source::{MemoryLoader, SourceLoader};
use slipway_core::{load_pipeline, load_pipeline_text, yaml};
use std::path::Path;

struct Case {
    name: String,
    files: Vec<(String, String)>,
    context: String,
    plan: Option<Vec<String>>,
    plan_variables: Vec<(String, Vec<String>)>,
    plan_name: Option<String>,
    job_fields: Vec<(String, Vec<String>)>,
    errors: Option<Vec<String>>,
    filtered: bool,
}

fn parse_case(name: &str, text: &str) -> Case {
    let mut case = Case {
        name: name.to_string(),
        files: Vec::new(),
        context: String::new(),
        plan: None,
        plan_variables: Vec::new(),
        plan_name: None,
        job_fields: Vec::new(),
        errors: None,
        filtered: false,
    };
    let mut section: Option<String> = None;
    let mut body = String::new();
    let flush = |section: &Option<String>, body: &str, case: &mut Case| {
        let Some(s) = section else { return };
        let lines = || -> Vec<String> {
            body.lines()
                .map(str::trim_end)
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect()
        };
        if s == "context" {
            case.context = body.trim().to_string();
        } else if s == "plan" {
            case.plan = Some(lines());
        } else if let Some(job) = s.strip_prefix("plan-variables ") {
            case.plan_variables.push((job.trim().to_string(), lines()));
        } else if s == "plan-name" {
            case.plan_name = Some(body.trim().to_string());
        } else if let Some(job) = s.strip_prefix("job ") {
            case.job_fields.push((job.trim().to_string(), lines()));
        } else if s == "errors" {
            case.errors = Some(lines());
        } else if s == "filtered" {
            case.filtered = true;
        } else {
            case.files.push((s.clone(), body.to_string()));
        }
    };
    for line in text.lines() {
        if let Some(header) = line.strip_prefix("--- ") {
            flush(&section, &body, &mut case);
            section = Some(header.trim().to_string());
            body.clear();
        } else if section.is_some() {
            body.push_str(line);
            body.push('\n');
        }
    }
    flush(&section, &body, &mut case);
    case
}

fn trigger(case: &Case, files: &[String]) -> Trigger {
    let mut ref_name = "main".to_string();
    let mut tag = false;
    let mut source = "push".to_string();
    let mut variables = Vec::new();
    let mut changed = None;
    for word in case.context.split_whitespace() {
        if let Some(v) = word.strip_prefix("ref=") {
            ref_name = v.to_string();
        } else if let Some(v) = word.strip_prefix("tag=") {
            tag = v == "true";
        } else if let Some(v) = word.strip_prefix("source=") {
            source = v.to_string();
        } else if let Some(v) = word.strip_prefix("var:") {
            let (k, val) = v.split_once('=').unwrap_or((v, ""));
            variables.push((k.to_string(), val.replace("\\s", " ")));
        } else if let Some(v) = word.strip_prefix("changed=") {
            changed = Some(
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
            );
        } else {
            panic!("{}: unknown context word {word}", case.name);
        }
    }
    let predefined = plan::basic_predefined(&ref_name, tag, &source, "main");
    Trigger {
        ref_name,
        tag,
        source,
        changed_files: changed,
        files: files.to_vec(),
        predefined,
        variables,
        compare_to: Vec::new(),
    }
}

fn render_plan(p: &plan::Plan) -> Vec<String> {
    p.jobs
        .iter()
        .map(|j| {
            let needs = match &j.needs {
                None => "-".to_string(),
                Some(n) if n.is_empty() => "[]".to_string(),
                Some(n) => n
                    .iter()
                    .map(|x| x.job.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
            };
            format!(
                "{} | {} | {} | allow_failure={} | needs={}",
                j.name,
                j.stage,
                j.when.as_str(),
                j.allow_failure,
                needs
            )
        })
        .collect()
}

/// Plan a case's pipeline; `Err` holds rendered errors as `LINE:COL: message`.
fn outcome(
    loader: &MemoryLoader,
    path: &str,
    text: Option<&str>,
    trig: &Trigger,
) -> Result<Option<plan::Plan>, Vec<String>> {
    let vars = trig.predefined.clone();
    let lookup = move |n: &str| vars.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let loaded = match text {
        Some(t) => load_pipeline_text(loader, path, t, &lookup),
        None => load_pipeline(loader, path, &lookup),
    };
    let render = |d: &slipway_core::diag::Diagnostics| -> Vec<String> {
        d.0.iter()
            .map(|d| {
                let file = loaded.sources.path(d.span.file);
                let prefix = if file == path {
                    String::new()
                } else {
                    format!("{file}:")
                };
                format!(
                    "{prefix}{}:{}: {}",
                    d.span.start.line, d.span.start.col, d.message
                )
            })
            .collect()
    };
    let pipeline = loaded.pipeline.as_ref().map_err(render)?;
    match plan::plan(pipeline, trig) {
        Err(d) => Err(render(&d)),
        Ok(Err(NoPipeline::FilteredByWorkflow)) => Ok(None),
        Ok(Ok(p)) => Ok(Some(p)),
    }
}

fn run_case(case: &Case) -> Result<(), String> {
    let mut loader = MemoryLoader::new();
    for (p, t) in &case.files {
        loader = loader.with(p, t);
    }
    let Some((main_path, _)) = case.files.first() else {
        return Err("no pipeline file".into());
    };
    let trig = trigger(case, &loader.list());
    let got = outcome(&loader, main_path, None, &trig);
    match (&case.errors, got) {
        (Some(expected), Err(actual)) => {
            for e in expected {
                let (pos, needle) = e.split_once(": ").unwrap_or(("", e));
                let found = actual
                    .iter()
                    .any(|a| a.starts_with(&format!("{pos}: ")) && a.contains(needle.trim()));
                if !found {
                    return Err(format!(
                        "expected error `{e}`, got:\n  {}",
                        actual.join("\n  ")
                    ));
                }
            }
            if actual.len() != expected.len() {
                return Err(format!(
                    "expected {} errors, got {}:\n  {}",
                    expected.len(),
                    actual.len(),
                    actual.join("\n  ")
                ));
            }
            Ok(())
        }
        (Some(_), Ok(_)) => Err("expected errors, but the pipeline is valid".into()),
        (None, Err(actual)) => Err(format!("unexpected errors:\n  {}", actual.join("\n  "))),
        (None, Ok(plan)) => {
            if case.filtered {
                return match plan {
                    None => Ok(()),
                    Some(p) => Err(format!(
                        "expected no pipeline, got:\n  {}",
                        render_plan(&p).join("\n  ")
                    )),
                };
            }
            let Some(plan) = plan else {
                return Err("no pipeline: filtered out by workflow:rules".into());
            };
            let rendered = render_plan(&plan);
            if let Some(expected) = &case.plan {
                if &rendered != expected {
                    return Err(format!(
                        "plan differs\nexpected:\n  {}\ngot:\n  {}",
                        expected.join("\n  "),
                        rendered.join("\n  ")
                    ));
                }
            }
            if let Some(expected) = &case.plan_name {
                let got = plan.name.clone().unwrap_or_default();
                if &got != expected {
                    return Err(format!("pipeline name: expected {expected:?}, got {got:?}"));
                }
            }
            for (job, vars) in &case.plan_variables {
                let Some(pj) = plan.jobs.iter().find(|j| &j.name == job) else {
                    return Err(format!("no planned job {job}"));
                };
                for kv in vars {
                    if let Some(k) = kv.strip_prefix('!') {
                        if let Some(d) = pj.variables.iter().find(|d| d.key == k) {
                            return Err(format!("{job}: expected no {k}, got {k}={}", d.value));
                        }
                        continue;
                    }
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    let got = pj
                        .variables
                        .iter()
                        .rev()
                        .find(|d| d.key == k)
                        .map(|d| d.value.as_str());
                    if got != Some(v) {
                        return Err(format!("{job}: expected {k}={v}, got {got:?}"));
                    }
                }
            }
            // The expanded configuration plans to the same jobs.
            let lookup = |_: &str| None;
            let loaded = load_pipeline(&loader, main_path, &lookup);
            if !case.job_fields.is_empty() {
                let pipeline = loaded.pipeline.as_ref().map_err(|_| "no pipeline")?;
                check_job_fields(&case.job_fields, pipeline)?;
            }
            let tree = loaded.tree.ok_or("no tree")?;
            let text = yaml::emit(&tree);
            match outcome(&loader, "preview.yml", Some(&text), &trig) {
                Ok(Some(p2)) if render_plan(&p2) == rendered => Ok(()),
                Ok(other) => Err(format!(
                    "preview plans differently:\n{text}\n  {:?}",
                    other.map(|p| render_plan(&p))
                )),
                Err(e) => Err(format!(
                    "preview does not lint:\n{text}\n  {}",
                    e.join("\n  ")
                )),
            }
        }
    }
}

/// Compare `path = value` lines with the JSON form of checked job definitions.
fn check_job_fields(
    fields: &[(String, Vec<String>)],
    pipeline: &slipway_core::model::Pipeline,
) -> Result<(), String> {
    for (name, lines) in fields {
        let job = pipeline
            .jobs
            .iter()
            .find(|j| &j.name == name)
            .ok_or_else(|| format!("no job definition {name}"))?;
        let json = serde_json::to_value(job).map_err(|e| e.to_string())?;
        for line in lines {
            let (path, want) = line
                .split_once(" = ")
                .ok_or_else(|| format!("job {name}: bad line `{line}`"))?;
            let mut at = Some(&json);
            for seg in path.trim().split('.') {
                at = at.and_then(|v| match v {
                    serde_json::Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
                    serde_json::Value::Object(o) => o.get(seg),
                    _ => None,
                });
            }
            let got = match at {
                None => "missing".to_string(),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            };
            let want = want.trim();
            let want_norm = serde_json::from_str::<serde_json::Value>(want)
                .ok()
                .filter(|v| !v.is_string())
                .map(|v| v.to_string())
                .or_else(|| serde_json::from_str::<String>(want).ok())
                .unwrap_or_else(|| want.to_string());
            if got != want_norm {
                return Err(format!(
                    "job {name}: {path}: expected {want_norm}, got {got}"
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn pipeline_cases() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("cases directory")
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "case"))
        .collect();
    entries.sort();
    let only = std::env::var("CASE").ok();
    let mut failures = Vec::new();
    let mut ran = 0;
    for path in &entries {
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_default();
        if only.as_ref().is_some_and(|o| !name.contains(o.as_str())) {
            continue;
        }
        let text = std::fs::read_to_string(path).expect("readable case");
        let case = parse_case(&name, &text);
        ran += 1;
        if let Err(e) = run_case(&case) {
            failures.push(format!("── {name}: {e}"));
        }
    }
    println!("{ran} pipeline cases");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    if only.is_none() {
        assert!(ran >= 1, "no cases found");
    }
}
