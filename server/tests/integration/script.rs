//! The browser tracker served on the gRPC port, with its caching headers.

use crate::grpc_web::http1;
use crate::harness::*;

async fn get(addr: std::net::SocketAddr, method: &str, path: &str, extra_headers: &str) -> (String, String) {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n");
    let response = String::from_utf8(http1(addr, request.as_bytes()).await).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_lowercase(), body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracker_is_served_with_cache_headers_and_a_versioned_path() {
    let server = TestServer::start().await;
    let versioned = tally_server::script::versioned_path();

    let (head, body) = get(server.addr, "GET", "/tally.js", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert!(head.contains("cache-control: public, max-age=3600"), "{head}");
    assert!(head.contains(&format!("content-location: {versioned}")), "{head}");
    assert!(head.contains("access-control-allow-origin: *"), "{head}");
    assert_eq!(body, tally_server::script::SCRIPT);

    let (head, body) = get(server.addr, "GET", &versioned, "").await;
    assert!(
        head.contains("cache-control: public, max-age=31536000, immutable"),
        "{head}"
    );
    assert_eq!(body, tally_server::script::SCRIPT);

    let etag = head
        .lines()
        .find_map(|l| l.strip_prefix("etag: "))
        .unwrap()
        .to_string();
    let (head, body) = get(
        server.addr,
        "GET",
        "/tally.js",
        &format!("If-None-Match: {etag}\r\n"),
    )
    .await;
    assert!(head.starts_with("http/1.1 304"), "{head}");
    assert!(body.is_empty());

    let (head, body) = get(server.addr, "HEAD", "/tally.js", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.is_empty());

    let (head, _) = get(server.addr, "GET", "/tally-000000000000.js", "").await;
    assert!(
        !head.starts_with("http/1.1 200"),
        "another build is not served: {head}"
    );
    server.stop().await;
}
