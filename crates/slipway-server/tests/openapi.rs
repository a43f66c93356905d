//! The OpenAPI document served at `/api/v1/openapi.json` describes exactly the routes the
//! router has: every route is in the document and every documented operation is routed.

use serde_json::Value;
use std::collections::BTreeSet;

#[test]
fn every_route_is_documented_and_every_documented_route_exists() {
    let doc: Value =
        serde_json::from_str(slipway_server::http::api::system::OPENAPI).expect("valid JSON");
    assert_eq!(doc["openapi"].as_str().map(|v| &v[..2]), Some("3."));
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, _) in item.as_object().expect("path item") {
            if method == "parameters" {
                continue;
            }
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    let routed: BTreeSet<(String, String)> = slipway_server::http::api_routes()
        .list
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let stale: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty(),
        "routes missing from openapi.json: {missing:?}"
    );
    assert!(stale.is_empty(), "documented but not routed: {stale:?}");
}

#[test]
fn every_reference_resolves_and_path_parameters_are_declared() {
    let doc: Value =
        serde_json::from_str(slipway_server::http::api::system::OPENAPI).expect("valid JSON");
    fn refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if k == "$ref" {
                        if let Some(s) = x.as_str() {
                            out.push(s.to_string());
                        }
                    }
                    refs(x, out);
                }
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    for r in &all {
        let pointer = r.strip_prefix('#').expect("local reference");
        assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
    }
    for (path, item) in doc["paths"].as_object().expect("paths") {
        let names: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .collect();
        let mut declared = Vec::new();
        let mut collect = |params: &Value| {
            for p in params.as_array().into_iter().flatten() {
                let p = match p.get("$ref").and_then(|r| r.as_str()) {
                    Some(r) => doc.pointer(&r[1..]).cloned().unwrap_or_default(),
                    None => p.clone(),
                };
                if p["in"] == "path" {
                    declared.push(p["name"].as_str().unwrap_or_default().to_string());
                }
            }
        };
        collect(&item["parameters"]);
        for (m, op) in item.as_object().expect("item") {
            if m != "parameters" {
                collect(&op["parameters"]);
            }
        }
        for n in names {
            assert!(
                declared.iter().any(|d| d == n),
                "{path}: path parameter {n} is not declared"
            );
        }
    }
}
