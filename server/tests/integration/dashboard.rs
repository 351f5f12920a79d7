//! The dashboard served on the gRPC port: the page at `/`, its versioned
//! script, caching and the headers that keep the page to itself.

use crate::grpc_web::http1;
use crate::harness::*;

async fn get(addr: std::net::SocketAddr, method: &str, path: &str, extra_headers: &str) -> (String, String) {
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{extra_headers}Connection: close\r\n\r\n");
    let response = String::from_utf8(http1(addr, request.as_bytes()).await).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_lowercase(), body.to_string())
}

fn header<'a>(head: &'a str, name: &str) -> &'a str {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .unwrap_or_else(|| panic!("no {name} in {head}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_and_script_are_served_with_cache_and_security_headers() {
    let server = TestServer::start().await;
    let script = tally_server::dashboard::script_path();

    let (head, page) = get(server.addr, "GET", "/", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert_eq!(header(&head, "cache-control"), "no-cache");
    let csp = header(&head, "content-security-policy");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(page, tally_server::dashboard::page());
    assert!(
        page.contains(&format!("src=\"{script}\"")),
        "the page loads this build's script"
    );

    // Unchanged: a 304 without a body.
    let etag = header(&head, "etag").to_string();
    let (head, body) = get(server.addr, "GET", "/", &format!("If-None-Match: {etag}\r\n")).await;
    assert!(head.starts_with("http/1.1 304"), "{head}");
    assert!(body.is_empty());

    let (head, body) = get(server.addr, "GET", &script, "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-type: text/javascript"), "{head}");
    assert_eq!(
        header(&head, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(body, tally_server::dashboard::SCRIPT);

    let (head, body) = get(server.addr, "HEAD", "/", "").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(body.is_empty());

    // Another build's script, or another path, is not the dashboard's.
    let (head, _) = get(server.addr, "GET", "/dashboard-000000000000.js", "").await;
    assert!(!head.starts_with("http/1.1 200"), "{head}");
    let (head, _) = get(server.addr, "POST", "/", "Content-Length: 0\r\n").await;
    assert!(!head.starts_with("http/1.1 200"), "only GET and HEAD: {head}");
    server.stop().await;
}
