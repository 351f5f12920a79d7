//! Serves the browser tracker (`sdk-web`'s `dist/tally.js`, committed as
//! `server/assets/tally.js`) on the gRPC port: `/tally.js` for script tags that
//! always want the current tracker, `/tally-<hash>.js` for pages that pin this
//! exact build and may cache it forever.

use std::sync::LazyLock;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tonic::body::Body;

/// The minified tracker, built by `npm run build` in `sdk-web/`.
pub const SCRIPT: &str = include_str!("../assets/tally.js");

/// How long browsers may reuse `/tally.js` before asking again (revalidated by ETag).
const UNVERSIONED_CACHE: &str = "public, max-age=3600, stale-while-revalidate=86400";
/// A versioned path never changes its content.
const VERSIONED_CACHE: &str = "public, max-age=31536000, immutable";

static HASH: LazyLock<String> = LazyLock::new(|| blake3::hash(SCRIPT.as_bytes()).to_hex()[..12].to_string());

/// The versioned path of this build of the tracker, e.g. `/tally-0123456789ab.js`.
pub fn versioned_path() -> String {
    format!("/tally-{}.js", *HASH)
}

/// Answers `GET`/`HEAD` of the tracker's paths; passes everything else on.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScriptLayer;

impl<S> tower::Layer<S> for ScriptLayer {
    type Service = ScriptService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ScriptService { inner }
    }
}

/// The service of [`ScriptLayer`].
#[derive(Debug, Clone)]
pub struct ScriptService<S> {
    inner: S,
}

impl<S, B> tower::Service<Request<B>> for ScriptService<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let reading = matches!(*request.method(), Method::GET | Method::HEAD);
        let path = request.uri().path();
        let cache = match path {
            "/tally.js" if reading => UNVERSIONED_CACHE,
            _ if reading && path == versioned_path() => VERSIONED_CACHE,
            _ => return Either::Right(self.inner.call(request)),
        };
        Either::Left(ready(Ok(respond(&request, cache))))
    }
}

fn respond<B>(request: &Request<B>, cache: &'static str) -> Response<Body> {
    let etag = format!("\"{}\"", *HASH);
    let fresh = etag_matches(request, &etag);
    let (status, body) = match (fresh, request.method() == Method::HEAD) {
        (true, _) => (StatusCode::NOT_MODIFIED, Body::empty()),
        (false, true) => (StatusCode::OK, Body::empty()),
        (false, false) => (StatusCode::OK, Body::new(SCRIPT.to_string())),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    let value = |s: String| HeaderValue::try_from(s).expect("ascii header value");
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/javascript; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    headers.insert(header::ETAG, value(etag));
    headers.insert(header::CONTENT_LOCATION, value(versioned_path()));
    // Any site may load the tracker, also as a module or with `crossorigin`.
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    if status == StatusCode::OK {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(SCRIPT.len()));
    }
    response
}

/// True when the request's `If-None-Match` names `etag` (quoted): the client's copy is current.
pub(crate) fn etag_matches<B>(request: &Request<B>, etag: &str) -> bool {
    request.headers().get(header::IF_NONE_MATCH).is_some_and(|tags| {
        tags.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii() == etag.as_bytes())
    })
}
