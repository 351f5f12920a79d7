//! grpc-web over HTTP/1.1 and CORS on the same port, spoken byte by byte.

use prost::Message;
use tally_proto::v1;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::*;

/// Sends raw HTTP/1.1 bytes and reads the whole response (the request should say `Connection: close`).
pub async fn http1(addr: std::net::SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflight_allows_grpc_web_headers() {
    let server = TestServer::start().await;
    let request = format!(
        "OPTIONS /tally.v1.IngestService/Track HTTP/1.1\r\nHost: {}\r\nOrigin: https://shop.example\r\n\
         Access-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type,x-grpc-web,x-user-agent,authorization\r\nConnection: close\r\n\r\n",
        server.addr
    );
    let response = String::from_utf8(http1(server.addr, request.as_bytes()).await)
        .unwrap()
        .to_lowercase();
    assert!(response.starts_with("http/1.1 200"), "{response}");
    assert!(
        response.contains("access-control-allow-origin: https://shop.example"),
        "{response}"
    );
    for header in [
        "content-type",
        "x-grpc-web",
        "x-user-agent",
        "grpc-timeout",
        "authorization",
    ] {
        assert!(response.contains(header), "preflight allows {header}: {response}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_web_track_over_http1() {
    let server = TestServer::start().await;
    server.site("s", "UTC").await;
    let key = server.key(v1::KeyKind::Ingest, &["s"]).await;
    let request = v1::TrackRequest {
        site_id: "s".into(),
        events: vec![pageview(1, now_micros(), "https://s.example/", "v")],
    };
    let (head, reply) = browser_track(server.addr, &key, &request, "User-Agent: Mozilla/5.0\r\n").await;
    assert!(head.contains("access-control-expose-headers"), "{head}");
    assert_eq!(reply.accepted, 1);
    server.stop().await;
}

/// Sends a `Track` the way a browser does (grpc-web over HTTP/1.1, from the
/// origin https://s.example) with `extra_headers` ("Name: value\r\n" lines);
/// returns the response head (lower-case) and the decoded reply.
pub async fn browser_track(
    addr: std::net::SocketAddr,
    key: &str,
    track: &v1::TrackRequest,
    extra_headers: &str,
) -> (String, v1::TrackResponse) {
    let body = track.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend((body.len() as u32).to_be_bytes());
    frame.extend(body);
    let mut request = format!(
        "POST /tally.v1.IngestService/Track HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/grpc-web+proto\r\n\
         X-Grpc-Web: 1\r\nOrigin: https://s.example\r\nAuthorization: Bearer {key}\r\n{extra_headers}\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        frame.len()
    )
    .into_bytes();
    request.extend(frame);
    let response = http1(addr, &request).await;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&response[..split]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let body = dechunk(
        &response[split + 4..],
        head.contains("transfer-encoding: chunked"),
    );
    assert_eq!(
        body[0],
        0,
        "first frame is data: {}",
        String::from_utf8_lossy(&body)
    );
    let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
    let reply = v1::TrackResponse::decode(&body[5..5 + len]).unwrap();
    let trailer = &body[5 + len..];
    assert_eq!(trailer[0], 0x80, "then the trailer frame");
    assert!(String::from_utf8_lossy(&trailer[5..]).contains("grpc-status:0"));
    (head, reply)
}

fn dechunk(body: &[u8], chunked: bool) -> Vec<u8> {
    if !chunked {
        return body.to_vec();
    }
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").unwrap();
        let size = usize::from_str_radix(std::str::from_utf8(&rest[..line_end]).unwrap().trim(), 16).unwrap();
        if size == 0 {
            return out;
        }
        out.extend(&rest[line_end + 2..line_end + 2 + size]);
        rest = &rest[line_end + 2 + size + 2..];
    }
}
