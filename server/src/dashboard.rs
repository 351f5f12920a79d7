//! Serves the built-in dashboard (`sdk-web/dashboard`, built by `npm run asset`
//! into `server/assets/dashboard/`) on the gRPC port: the page at `/` and its
//! script at `/dashboard-<hash>.js`. The page reads reports through the public
//! API over grpc-web with the query key its user signs in with; the server
//! keeps no dashboard state.

use std::sync::LazyLock;
use std::task::{Context, Poll};

use futures::future::{Either, Ready, ready};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use tonic::body::Body;

/// The page as built: styles inline, the script referenced as `/dashboard.js`.
pub const PAGE: &str = include_str!("../assets/dashboard/index.html");
/// The minified script (the typed client and the dashboard), built by `npm run asset` in `sdk-web/`.
pub const SCRIPT: &str = include_str!("../assets/dashboard/dashboard.js");

/// Where the built page refers to its script; served under the versioned path instead.
const SCRIPT_REFERENCE: &str = "\"/dashboard.js\"";

/// Only what the page itself loads and calls: its own script and the API on
/// this origin. Report values are attacker-controlled text (ingest keys are
/// public), so no inline script may run even if markup slipped in.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; \
     style-src 'unsafe-inline'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

static SCRIPT_HASH: LazyLock<String> =
    LazyLock::new(|| blake3::hash(SCRIPT.as_bytes()).to_hex()[..12].to_string());
static SERVED_PAGE: LazyLock<String> =
    LazyLock::new(|| PAGE.replace(SCRIPT_REFERENCE, &format!("\"{}\"", script_path())));
static PAGE_ETAG: LazyLock<String> =
    LazyLock::new(|| format!("\"{}\"", &blake3::hash(SERVED_PAGE.as_bytes()).to_hex()[..12]));

/// The versioned path of this build's script, e.g. `/dashboard-0123456789ab.js`.
pub fn script_path() -> String {
    format!("/dashboard-{}.js", *SCRIPT_HASH)
}

/// The page as served: the built page with the script's versioned path.
pub fn page() -> &'static str {
    &SERVED_PAGE
}

/// Answers `GET`/`HEAD` of `/` and of the script's path; passes everything else on.
#[derive(Debug, Clone, Copy, Default)]
pub struct DashboardLayer;

impl<S> tower::Layer<S> for DashboardLayer {
    type Service = DashboardService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DashboardService { inner }
    }
}

/// The service of [`DashboardLayer`].
#[derive(Debug, Clone)]
pub struct DashboardService<S> {
    inner: S,
}

/// One of the dashboard's files, with how it is served.
struct Asset {
    body: &'static str,
    content_type: &'static str,
    cache: &'static str,
    etag: String,
}

impl<S, B> tower::Service<Request<B>> for DashboardService<S>
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
        let asset = match path {
            // Revalidated on every visit (a 304 when unchanged), so a new build shows at once.
            "/" if reading => Asset {
                body: page(),
                content_type: "text/html; charset=utf-8",
                cache: "no-cache",
                etag: PAGE_ETAG.clone(),
            },
            // Named by its content: never changes.
            _ if reading && path == script_path() => Asset {
                body: SCRIPT,
                content_type: "text/javascript; charset=utf-8",
                cache: "public, max-age=31536000, immutable",
                etag: format!("\"{}\"", *SCRIPT_HASH),
            },
            _ => return Either::Right(self.inner.call(request)),
        };
        Either::Left(ready(Ok(respond(&request, asset))))
    }
}

fn respond<B>(request: &Request<B>, asset: Asset) -> Response<Body> {
    let fresh = crate::script::etag_matches(request, &asset.etag);
    let (status, body) = match (fresh, request.method() == Method::HEAD) {
        (true, _) => (StatusCode::NOT_MODIFIED, Body::empty()),
        (false, true) => (StatusCode::OK, Body::empty()),
        (false, false) => (StatusCode::OK, Body::new(asset.body.to_string())),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(asset.cache));
    headers.insert(
        header::ETAG,
        HeaderValue::try_from(asset.etag).expect("ascii header value"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    if status == StatusCode::OK {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(asset.body.len()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_refers_to_the_versioned_script() {
        assert!(
            PAGE.contains(SCRIPT_REFERENCE),
            "the built page names {SCRIPT_REFERENCE}"
        );
        assert!(page().contains(&format!("\"{}\"", script_path())));
        assert!(!page().contains(SCRIPT_REFERENCE));
    }
}
