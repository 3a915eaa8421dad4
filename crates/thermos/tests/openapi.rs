//! `/openapi.json`: a structurally valid OpenAPI 3 document, served without
//! a key, whose every (method, path) is served by the router. (The other
//! direction, every router route documented, is the unit test in
//! `src/api/openapi.rs`.)

mod common;

use common::{ADMIN_KEY, spawn_app};
use serde_json::Value;

/// Every `$ref` string in `value`.
fn refs<'a>(value: &'a Value, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// Resolves a local JSON pointer reference (`#/a/b`).
fn resolve<'a>(doc: &'a Value, reference: &str) -> Option<&'a Value> {
    doc.pointer(reference.strip_prefix('#')?)
}

#[tokio::test]
async fn openapi_json_is_a_valid_openapi_3_document() {
    let app = spawn_app().await;
    // No key needed.
    let response = app.http.get(app.url("/openapi.json")).send().await.expect("sent");
    assert_eq!(response.status().as_u16(), 200);
    let doc: Value = response.json().await.expect("JSON");

    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Thermos API");
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(doc["info"]["description"].as_str().unwrap().contains("1611"));
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");

    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 19, "{} paths", paths.len());
    let mut operation_ids = std::collections::BTreeSet::new();
    for (path, item) in paths {
        assert!(path.starts_with('/'), "{path}");
        let operations: Vec<_> = item
            .as_object()
            .expect("path item")
            .iter()
            .filter(|(m, _)| ["get", "post", "put", "delete", "patch"].contains(&m.as_str()))
            .collect();
        assert!(!operations.is_empty(), "{path} has no operation");
        for (method, operation) in operations {
            let responses = operation["responses"].as_object();
            assert!(
                responses.is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            let id = operation["operationId"].as_str().expect("operationId");
            assert!(operation_ids.insert(id.to_owned()), "duplicate operationId {id}");
            // Every `{param}` of the template is declared as a path parameter.
            for segment in path.split('/').filter(|s| s.starts_with('{')) {
                let name = segment.trim_matches(|c| c == '{' || c == '}');
                let declared = operation["parameters"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|p| p["in"] == "path" && p["name"] == name && p["required"] == true);
                assert!(declared, "{method} {path}: path parameter {name} not declared");
            }
        }
    }

    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20);
    for reference in all {
        assert!(resolve(&doc, reference).is_some(), "unresolved $ref {reference}");
    }
    app.stop().await;
}

#[tokio::test]
async fn every_documented_route_is_served() {
    let app = spawn_app().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, 200);
    let documented = thermos::api::openapi::documented_routes();
    assert!(documented.len() >= 23, "{documented:?}");
    for (method, template) in documented {
        assert!(doc["paths"][&template][method.to_lowercase()].is_object());
        let path = template
            .split('/')
            .map(|s| if s.starts_with('{') { "does-not-exist" } else { s })
            .collect::<Vec<_>>()
            .join("/");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = app
            .send(app.http.request(method.clone(), app.url(&path)), ADMIN_KEY)
            .await;
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            !(status == 404 && message == "route not found") && message != "method not allowed on this route",
            "{method} {template} is documented but not served: {status} {body}"
        );
    }
    app.stop().await;
}
