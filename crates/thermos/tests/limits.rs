//! `[limits]` through the real server: body and header size, the request
//! timeout, connections per project and page sizes, each answered with the
//! JSON error body and its code.

mod common;

use std::time::Duration;

use common::{ADMIN_KEY, AppOptions, PROVIDER, TestApp, spawn_app_with};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

async fn spawn(limits: &str) -> TestApp {
    spawn_app_with(AppOptions {
        manual_clock: true,
        extra_toml: format!("\n[limits]\n{limits}"),
        ..AppOptions::default()
    })
    .await
}

fn import_body(project: &str, external_id: &str) -> Value {
    json!({
        "project": project,
        "provider": PROVIDER,
        "external_id": external_id,
        "access_token": "at-1",
        "refresh_token": "rt-1",
        "expires_in": 3600,
    })
}

fn assert_error(status: u16, body: &Value, expected_status: u16, code: u64, kind: &str) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert_eq!(body["error"]["type"], kind, "{body}");
    assert!(
        body["error"]["request_id"].as_str().is_some_and(|id| !id.is_empty()),
        "{body}"
    );
}

#[tokio::test]
async fn an_oversized_body_is_answered_413_with_code_1612_and_nothing_is_written() {
    let app = spawn("max_body_bytes = 16384\n").await;
    let mut body = import_body("p1", "big");
    body["metadata"] = json!({"padding": "x".repeat(20_000)});
    let (status, answer) = app.post("/v1/connections", body).await;
    assert_error(status, &answer, 413, 1612, "payload_too_large");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("16384 bytes (limits.max_body_bytes)"), "{message}");

    let (_, list) = app.get("/v1/connections").await;
    assert_eq!(list["data"], json!([]));
    // A body under the limit still works.
    let (status, answer) = app.post("/v1/connections", import_body("p1", "small")).await;
    assert_eq!(status, 201, "{answer}");

    // Also on a route whose body is optional.
    let padded = format!("{{\"rejected_token\": \"{}\"}}", "x".repeat(20_000));
    let id = answer["id"].as_str().unwrap();
    let request = app
        .http
        .post(app.url(&format!("/v1/connections/{id}/refresh")))
        .header("content-type", "application/json")
        .body(padded);
    let (status, answer) = app.send(request, ADMIN_KEY).await;
    assert_error(status, &answer, 413, 1612, "payload_too_large");
    app.stop().await;
}

#[tokio::test]
async fn oversized_headers_are_answered_431_with_code_1613() {
    let app = spawn("max_header_bytes = 8192\n").await;
    let request = app
        .http
        .get(app.url("/v1/connections"))
        .header("x-padding", "y".repeat(10_000));
    let (status, answer) = app.send(request, ADMIN_KEY).await;
    assert_error(status, &answer, 431, 1613, "headers_too_large");
    assert!(
        answer["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.max_header_bytes"),
        "{answer}"
    );
    let long_query = format!("/v1/connections?provider={}", "p".repeat(9000));
    let (status, answer) = app.get(&long_query).await;
    assert_error(status, &answer, 431, 1613, "headers_too_large");
    let (status, _) = app.get("/v1/connections").await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test]
async fn a_request_whose_body_never_finishes_is_answered_503_with_code_1602_after_the_timeout() {
    let app = spawn("request_timeout = \"1s\"\n").await;
    let addr = app.base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/connections HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ADMIN_KEY}\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"project\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let started = std::time::Instant::now();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    // Read until the JSON body is complete or the server closes.
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            raw.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&raw);
            if n == 0 || text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 10 s");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900), "answered after {elapsed:?}");
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full response");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
    let body: Value = serde_json::from_str(body.trim()).expect("a JSON body");
    assert_error(503, &body, 503, 1602, "unavailable");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limits.request_timeout"),
        "{body}"
    );
    let (_, list) = app.get("/v1/connections").await;
    assert_eq!(list["data"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn a_project_at_its_maximum_connections_is_refused_403_and_nothing_is_written() {
    let app = spawn("max_connections_per_project = 2\n").await;
    for external_id in ["u1", "u2"] {
        let (status, body) = app.post("/v1/connections", import_body("p1", external_id)).await;
        assert_eq!(status, 201, "{body}");
    }
    let (_, events_before) = app.get("/v1/events?limit=500").await;
    let (status, answer) = app.post("/v1/connections", import_body("p1", "u3")).await;
    assert_error(status, &answer, 403, 1606, "forbidden");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("limits.max_connections_per_project = 2"), "{message}");

    let (_, list) = app.get("/v1/connections?project=p1").await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    let (_, events_after) = app.get("/v1/events?limit=500").await;
    assert_eq!(events_after["data"], events_before["data"], "no event either");

    // Another project has its own allowance; a deletion makes room.
    let (status, body) = app.post("/v1/connections", import_body("p2", "u1")).await;
    assert_eq!(status, 201, "{body}");
    let first = list["data"][0]["id"].as_str().unwrap();
    let response = app
        .http
        .delete(app.url(&format!("/v1/connections/{first}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, body) = app.post("/v1/connections", import_body("p1", "u3")).await;
    assert_eq!(status, 201, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn a_page_size_over_the_maximum_is_refused_with_code_1600_naming_the_maximum() {
    let app = spawn("").await;
    let (status, body) = app.post("/v1/connections", import_body("p1", "u1")).await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let cases = [
        ("/v1/connections?limit=1001".to_owned(), "limit: must be 1-1000"),
        (
            format!("/v1/connections/{id}/attempts?limit=1001"),
            "limit: must be 1-1000",
        ),
        ("/v1/events?limit=501".to_owned(), "limit: must be 1-500"),
        ("/v1/runs?limit=1001".to_owned(), "limit: must be 1-1000"),
        ("/v1/runs?limit=0".to_owned(), "limit: must be 1-1000"),
    ];
    for (path, message) in &cases {
        let (status, answer) = app.get(path).await;
        assert_error(status, &answer, 400, 1600, "bad_request");
        assert_eq!(answer["error"]["message"], *message, "{path}");
    }
    for path in [
        "/v1/connections?limit=1000".to_owned(),
        format!("/v1/connections/{id}/attempts?limit=1000"),
        "/v1/events?limit=500".to_owned(),
        "/v1/runs?limit=1000".to_owned(),
    ] {
        let (status, answer) = app.get(&path).await;
        assert_eq!(status, 200, "{path}: {answer}");
    }
    app.stop().await;
}
