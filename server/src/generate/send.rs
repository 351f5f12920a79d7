//! Sends a planned data set to a running server over `IngestService/TrackStream`,
//! in timestamp order, with a progress line on stderr.

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use tally_proto::v1;
use tally_proto::v1::ingest_service_client::IngestServiceClient;
use tonic::transport::Channel;

use super::model::Plan;

/// Batches per `TrackStream` call. The stream's answer comes when it ends, so
/// a data set goes out as several streams, one after another (in order: a
/// visitor's events reach the server in time order, as from a live site).
const BATCHES_PER_STREAM: usize = 100;

/// What the server said about the events.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Events sent.
    pub sent: u64,
    /// Stored.
    pub accepted: u64,
    /// Already stored (a data set sent again).
    pub duplicates: u64,
    /// Refused, with a reason.
    pub rejected: u64,
    /// Excluded by the site's privacy settings.
    pub excluded: u64,
    /// The first few rejections, as "event_id field: message".
    pub rejections: Vec<String>,
}

/// Adds `key` as the bearer token of `message`.
pub fn authed<T>(key: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut request = tonic::Request::new(message);
    let value = format!("Bearer {key}")
        .parse()
        .context("the key is not a valid header value")?;
    request.metadata_mut().insert("authorization", value);
    Ok(request)
}

/// Sends every event of `plan` to `site` in batches of `batch_size`.
pub async fn send(
    channel: Channel,
    key: &str,
    site: &str,
    plan: &Plan,
    batch_size: usize,
) -> anyhow::Result<Tally> {
    let client = IngestServiceClient::new(channel)
        .max_decoding_message_size(64 << 20)
        .max_encoding_message_size(8 << 20);
    let started = Instant::now();
    let total = plan.events.len();
    let mut tally = Tally::default();
    let mut progress = Progress::new(total);
    let stream_events = batch_size * BATCHES_PER_STREAM;
    for (stream_index, part) in plan.events.chunks(stream_events).enumerate() {
        let (tx, rx) = tokio::sync::mpsc::channel::<v1::TrackRequest>(8);
        let site_id = site.to_owned();
        let request = authed(key, tokio_stream::wrappers::ReceiverStream::new(rx))?;
        let call = tokio::spawn({
            let mut client = client.clone();
            async move { client.track_stream(request).await }
        });
        let mut sent_here = 0;
        for batch in part.chunks(batch_size) {
            let events: Vec<v1::Event> = batch.iter().map(|p| plan.event(p)).collect();
            sent_here += events.len() as u64;
            let message = v1::TrackRequest {
                site_id: site_id.clone(),
                events,
            };
            if tx.send(message).await.is_err() {
                break; // the call ended early; its error is reported below
            }
            progress.show(tally.sent + sent_here, &tally, started);
        }
        drop(tx);
        let response = call
            .await
            .context("the sending task failed")?
            .with_context(|| format!("TrackStream (stream {stream_index}) failed"))?
            .into_inner();
        tally.sent += sent_here;
        tally.accepted += response.accepted as u64;
        tally.duplicates += response.duplicates as u64;
        tally.rejected += response.rejected as u64;
        tally.excluded += response.excluded as u64;
        for item in &response.not_accepted {
            let Some(result) = &item.result else { continue };
            if result.verdict() == v1::Verdict::Rejected && tally.rejections.len() < 10 {
                tally.rejections.push(format!(
                    "{} {}: {}",
                    result.event_id, result.field, result.message
                ));
            }
        }
        progress.show(tally.sent, &tally, started);
    }
    progress.finish();
    Ok(tally)
}

/// A single line on stderr, redrawn at most four times a second.
struct Progress {
    total: usize,
    last: Option<Instant>,
    drawn: bool,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self {
            total,
            last: None,
            drawn: false,
        }
    }

    fn show(&mut self, sent: u64, tally: &Tally, started: Instant) {
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_millis(250))
        {
            return;
        }
        self.last = Some(Instant::now());
        let rate = sent as f64 / started.elapsed().as_secs_f64().max(1e-3);
        let mut err = std::io::stderr().lock();
        let _ = write!(
            err,
            "\rgenerate: sent {sent} of {} events ({rate:.0}/s), {} accepted, {} duplicates, {} rejected   ",
            self.total, tally.accepted, tally.duplicates, tally.rejected
        );
        let _ = err.flush();
        self.drawn = true;
    }

    fn finish(&mut self) {
        if self.drawn {
            eprintln!();
        }
    }
}
