//! The pure core of Slipway: everything that can be decided without touching the outside
//! world. It reads GitLab CI YAML into a positioned tree, resolves includes, anchors,
//! `!reference` and `extends`, checks every keyword, evaluates `rules:if` expressions and
//! plans which jobs run for a given trigger.
//!
//! Nothing here performs I/O: files are read through the [`source::SourceLoader`] trait
//! that the shells (CLI, server) implement, so the core stays deterministic and fuzzable.

pub mod variables;
