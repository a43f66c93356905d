//! The pure core of Slipway: everything that can be decided without touching the outside
//! world. It reads GitLab CI YAML into a positioned tree, resolves includes, anchors,
//! `!reference` and `extends`, checks every keyword, evaluates `rules:if` expressions and
//! plans which jobs run for a given trigger.
//!
//! Nothing here performs I/O: files are read through the [`source::SourceLoader`] trait
//! that the shells (CLI, server) implement, so the core stays deterministic and fuzzable.

pub mod config;
pub mod deploy;
pub mod diag;
pub mod duration;
pub mod expr;
pub mod job;
pub mod model;
pub mod plan;
pub mod source;
pub mod variables;
pub mod yaml;

use diag::Diagnostics;
use source::{SourceLoader, SourceMap};

/// A pipeline file read, resolved and checked, with the sources kept for error messages.
pub struct Loaded {
    pub sources: SourceMap,
    /// The resolved tree (includes, references and `extends` applied): what
    /// `slipway preview` prints.
    pub tree: Option<yaml::Node>,
    pub pipeline: Result<model::Pipeline, Diagnostics>,
}

/// Read a pipeline file through `loader` and check it. `variables` are what
/// `include:rules` may use (predefined and project variables).
pub fn load_pipeline(
    loader: &dyn SourceLoader,
    path: &str,
    variables: &dyn Fn(&str) -> Option<String>,
) -> Loaded {
    let ctx = config::IncludeContext { variables };
    let loaded = config::load(loader, path, &ctx);
    finish(loaded)
}

/// Like [`load_pipeline`], with `include:rules` seeing what a trigger defines: its
/// predefined variables, then the variables given for the run (which win).
pub fn load_for_trigger(
    loader: &dyn SourceLoader,
    path: &str,
    trigger: Option<&plan::Trigger>,
) -> Loaded {
    let vars: Vec<(String, String)> = trigger
        .map(|t| {
            t.predefined
                .iter()
                .chain(t.variables.iter())
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    load_pipeline(loader, path, &move |name: &str| {
        vars.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

/// Like [`load_pipeline`] for text already in memory.
pub fn load_pipeline_text(
    loader: &dyn SourceLoader,
    path: &str,
    text: &str,
    variables: &dyn Fn(&str) -> Option<String>,
) -> Loaded {
    let ctx = config::IncludeContext { variables };
    finish(config::load_text(loader, path, text, &ctx))
}

fn finish(loaded: config::Loaded) -> Loaded {
    let config::Loaded {
        sources,
        root,
        mut diags,
        broken,
    } = loaded;
    let Some(tree) = root else {
        return Loaded {
            sources,
            tree: None,
            pipeline: Err(diags),
        };
    };
    let pipeline = match model::build(&tree) {
        Ok(p) if diags.is_empty() => Ok(p),
        Ok(_) => Err(diags),
        Err(model_diags) => {
            // Checks of a job whose `extends` or `!reference` failed would repeat that error.
            for d in model_diags.0 {
                let about_broken = broken.iter().any(|b| {
                    d.message.starts_with(&format!("jobs:{b} "))
                        || d.message.starts_with(&format!("jobs:{b}:"))
                });
                if !about_broken {
                    diags.0.push(d);
                }
            }
            Err(diags.sorted())
        }
    };
    Loaded {
        sources,
        tree: Some(tree),
        pipeline,
    }
}
pub mod schedule;
