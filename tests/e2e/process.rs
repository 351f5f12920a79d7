//! Starts the `tally` binary on a free port with its own data directory.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tally_proto::v1;
use tonic::transport::Channel;

pub const ADMIN_KEY: &str = "e2e-operator-key-0123456789";

/// The `tally` binary built alongside this test (target/<profile>/tally).
pub fn tally_binary() -> PathBuf {
    if let Ok(path) = std::env::var("TALLY_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let binary = profile_dir.join("tally");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --bin tally` first",
        binary.display()
    );
    binary
}

/// The optimised `tally` binary, built (or brought up to date) by cargo in
/// this test's target directory.
#[allow(dead_code)] // the correctness and soak suites use it, `e2e` does not
pub fn release_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TALLY_RELEASE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/correctness-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .expect("the test runs from target/<profile>/deps");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let started = Instant::now();
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--quiet",
            "-p",
            "tally-server",
            "--bin",
            "tally",
            "--target-dir",
        ])
        .arg(target)
        .current_dir(workspace)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "cargo build --release --bin tally failed: {status}"
    );
    eprintln!(
        "release build of tally up to date ({:.1} s)",
        started.elapsed().as_secs_f64()
    );
    target.join("release/tally")
}

pub struct Tally {
    pub child: Child,
    pub addr: String,
}

impl Tally {
    /// Starts `tally serve` on `data_dir` and waits until it answers.
    pub async fn start(data_dir: &Path) -> Self {
        Self::start_with(&tally_binary(), data_dir, &[]).await
    }

    /// Starts `tally serve` with `args` (besides the listen address) and
    /// waits until it answers.
    pub async fn start_with_args(args: &[std::ffi::OsString]) -> Self {
        let extra: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        Self::spawn(&tally_binary(), None, &extra).await
    }

    /// Starts `binary serve` on `data_dir` with extra flags and waits until it answers.
    pub async fn start_with(binary: &Path, data_dir: &Path, extra: &[&std::ffi::OsStr]) -> Self {
        Self::spawn(binary, Some(data_dir), extra).await
    }

    async fn spawn(binary: &Path, data_dir: Option<&Path>, extra: &[&std::ffi::OsStr]) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut command = Command::new(binary);
        command.args(["serve", "--listen", &addr]);
        if let Some(dir) = data_dir {
            command.arg("--data-dir").arg(dir);
        }
        let child = command
            .args(extra)
            .env("TALLY_ADMIN_KEY", ADMIN_KEY)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let tally = Self { child, addr };
        tally.wait_ready().await;
        tally
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(channel) = Channel::from_shared(format!("http://{}", self.addr))
                .unwrap()
                .connect()
                .await
            {
                let mut admin = v1::admin_service_client::AdminServiceClient::new(channel);
                if admin
                    .list_sites(authed(ADMIN_KEY, v1::ListSitesRequest {}))
                    .await
                    .is_ok()
                {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("tally did not start on {} within 90 s", self.addr);
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Sends SIGTERM, as an operator or a service manager would.
    pub fn terminate(&self) {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid}: {status:?}");
    }

    /// Waits for the process to exit, up to `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "tally did not exit within {limit:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Tally {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn authed<T>(key: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {key}").parse().unwrap());
    request
}

/// Creates a site and an ingest key; returns the key's secret.
pub async fn site_with_ingest_key(channel: Channel, site: &str) -> String {
    let mut admin = v1::admin_service_client::AdminServiceClient::new(channel);
    let request = v1::CreateSiteRequest {
        site: Some(v1::Site {
            site_id: site.into(),
            domain: format!("{site}.example"),
            ..Default::default()
        }),
    };
    admin.create_site(authed(ADMIN_KEY, request)).await.unwrap();
    let request = v1::CreateApiKeyRequest {
        kind: v1::KeyKind::Ingest as i32,
        site_ids: vec![site.into()],
        name: "e2e".into(),
        ..Default::default()
    };
    admin
        .create_api_key(authed(ADMIN_KEY, request))
        .await
        .unwrap()
        .into_inner()
        .secret
}

pub fn now_timestamp() -> prost_types::Timestamp {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    prost_types::Timestamp {
        seconds: now.as_secs() as i64,
        nanos: now.subsec_nanos() as i32,
    }
}

/// Every event of `site` stored in the last hour (and the next), as exported by the server.
pub async fn export_recent(channel: Channel, site: &str) -> Vec<v1::RecordedEvent> {
    let mut admin = v1::admin_service_client::AdminServiceClient::new(channel);
    let now = now_timestamp();
    let at = |seconds| Some(prost_types::Timestamp { seconds, nanos: 0 });
    let request = v1::ExportEventsRequest {
        site_id: site.into(),
        time_range: Some(v1::TimeRange {
            start_time: at(now.seconds - 3600),
            end_time: at(now.seconds + 3600),
        }),
        chunk_size: 10_000,
        ..Default::default()
    };
    let mut chunks = admin
        .export_events(authed(ADMIN_KEY, request))
        .await
        .unwrap()
        .into_inner();
    let mut events = Vec::new();
    while let Some(chunk) = chunks.message().await.unwrap() {
        events.extend(chunk.events);
    }
    events
}
