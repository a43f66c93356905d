//! The whole pipeline front end on arbitrary text: YAML, includes (the input may include
//! itself and a second file), `!reference`, `extends`, keyword checks and planning must
//! never panic, and every error must point inside a known file.
#![no_main]

use libfuzzer_sys::fuzz_target;
use slipway_core::plan::{basic_predefined, plan, Trigger};
use slipway_core::source::MemoryLoader;
use slipway_core::load_pipeline_text;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A second file so include paths have something to find.
    let loader = MemoryLoader::new()
        .with(".gitlab-ci.yml", text)
        .with("ci/common.yml", ".tmpl:\n  script: [echo common]\n  stage: test\n");
    let lookup = |name: &str| (name == "CI_COMMIT_BRANCH").then(|| "main".to_string());
    let loaded = load_pipeline_text(&loader, ".gitlab-ci.yml", text, &lookup);
    match &loaded.pipeline {
        Ok(pipeline) => {
            let trigger = Trigger {
                ref_name: "main".into(),
                source: "push".into(),
                predefined: basic_predefined("main", false, "push", "main"),
                files: vec![".gitlab-ci.yml".into(), "ci/common.yml".into()],
                ..Trigger::default()
            };
            let _ = plan(pipeline, &trigger);
            if let Some(tree) = &loaded.tree {
                let _ = slipway_core::yaml::emit(tree);
            }
        }
        Err(diags) => {
            assert!(!diags.is_empty(), "an invalid pipeline reports at least one error");
            let _ = diags.render(&loaded.sources);
        }
    }
});
