//! `getEntries` / `getEntriesBinary` responses, bounded whatever the request names:
//! - each id is served once (a request naming one entry 1 500 times gets it once);
//! - payload bytes per response are capped by `maxResponseBytes`: a request over it is answered
//!   413 before anything is sent whenever that is known in time;
//! - entries are read in groups sized to about [`GROUP_BYTES`] of payload, so that memory follows
//!   the bytes read, not the number of ids; a binary response of up to [`BUFFERED_BYTES`] is sent
//!   in one piece with its exact `Content-Length`, a larger one is sealed and streamed group by
//!   group (cut off — a failed transfer, never a response silently missing entries — if it
//!   passes the cap after it started).

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::sync::SyncCtx;
use crate::crypto::transport::{random_iv, SessionKey, AES_TAG_LEN};
use crate::store::registry::SharedStore;
use crate::store::RawEntry;
use crate::wire::{b64, framing, BinaryGetHeader, Entry, BINARY_GET_FORMAT};

/// Payload bytes read from the store at a time.
const GROUP_BYTES: u64 = 4 << 20;
/// Ids in the first group (before entry sizes are known) and at most in any group.
const FIRST_GROUP: usize = 64;
const MAX_GROUP: usize = 1024;
/// A binary response up to this many payload bytes is assembled and sent in one piece.
const BUFFERED_BYTES: u64 = 8 << 20;
/// Size of the buffers a binary response is written into: small enough for the allocator to
/// reuse them (one buffer of a whole 1 000-entry response, ~2 MB, is fresh memory every time).
const RESPONSE_CHUNK: usize = 64 * 1024;

/// `ids` without repeats, in the order of their first appearance.
pub fn distinct(ids: Vec<String>) -> Vec<String> {
    let mut seen = HashSet::with_capacity(ids.len());
    ids.into_iter()
        .filter(|id| seen.insert(id.clone()))
        .collect()
}

/// Why reading stopped.
enum Stop {
    TooLarge,
    Store(crate::store::StoreError),
}

/// Reads the requested entries group by group, counting their payload bytes against the cap and
/// sizing each group from the entry sizes seen so far.
struct GroupReader {
    store: SharedStore,
    ids: Vec<String>,
    at: usize,
    group: usize,
    read: u64,
    cap: u64,
}

impl GroupReader {
    fn new(store: SharedStore, ids: Vec<String>, cap: u64) -> Self {
        GroupReader {
            store,
            ids,
            at: 0,
            group: FIRST_GROUP,
            read: 0,
            cap,
        }
    }

    async fn next(&mut self) -> Option<Result<Vec<RawEntry>, Stop>> {
        if self.at >= self.ids.len() {
            return None;
        }
        let end = (self.at + self.group).min(self.ids.len());
        let wanted = end - self.at;
        let entries = match self.store.get_entries_raw(&self.ids[self.at..end]).await {
            Ok(entries) => entries,
            Err(e) => return Some(Err(Stop::Store(e))),
        };
        self.at = end;
        let bytes = payload_bytes(&entries);
        self.read = self.read.saturating_add(bytes);
        if self.read > self.cap {
            return Some(Err(Stop::TooLarge));
        }
        let average = (bytes / wanted.max(1) as u64).max(1);
        self.group = ((GROUP_BYTES / average) as usize).clamp(1, MAX_GROUP);
        Some(Ok(entries))
    }
}

fn payload_bytes(entries: &[RawEntry]) -> u64 {
    entries.iter().map(|e| e.encrypted_data.len() as u64).sum()
}

fn too_large(ctx: &SyncCtx) -> ApiError {
    let cap = ctx.state.node.config.limits.max_response_bytes;
    ctx.state
        .node
        .metrics
        .requests_refused
        .with_label_values(&["response_too_large"])
        .inc();
    ApiError::ResponseTooLarge(format!(
        "The entries requested hold more than this server's response limit of {cap} bytes; request fewer ids at a time"
    ))
}

/// Full entries for the JSON formats (built in memory): 413 as soon as the payloads read pass
/// `maxResponseBytes`, before more is read.
pub async fn read_within_cap(
    ctx: &SyncCtx,
    store: &SharedStore,
    ids: Vec<String>,
) -> Result<Vec<Entry>, ApiError> {
    let mut reader = GroupReader::new(
        store.clone(),
        ids,
        ctx.state.node.config.limits.max_response_bytes,
    );
    let mut entries = Vec::new();
    while let Some(group) = reader.next().await {
        match group {
            Ok(group) => {
                for raw in group {
                    let metadata = raw.metadata().map_err(ApiError::internal)?;
                    entries.push(Entry {
                        metadata,
                        encrypted_data: raw.encrypted_data.to_vec(),
                    });
                }
            }
            Err(Stop::TooLarge) => return Err(too_large(ctx)),
            Err(Stop::Store(e)) => return Err(e.into()),
        }
    }
    Ok(entries)
}

/// The binary format (spec §4.10): one session key wrapped to the reader, per entry a frame of the
/// metadata JSON with its `iv` and the AES-GCM-sealed payload (see the module docs for how it is
/// bounded).
pub async fn binary(
    ctx: &SyncCtx,
    store: SharedStore,
    ids: Vec<String>,
) -> Result<Response, ApiError> {
    let mut reader = GroupReader::new(store, ids, ctx.state.node.config.limits.max_response_bytes);
    let mut buffered: Vec<RawEntry> = Vec::new();
    let mut buffered_bytes = 0u64;
    let mut streaming = false;
    while let Some(group) = reader.next().await {
        match group {
            Ok(group) => {
                buffered_bytes += payload_bytes(&group);
                buffered.extend(group);
                if buffered_bytes > BUFFERED_BYTES {
                    streaming = true;
                    break;
                }
            }
            Err(Stop::TooLarge) => return Err(too_large(ctx)),
            Err(Stop::Store(e)) => return Err(e.into()),
        }
    }
    let reader_key = ctx.principal.clone();
    let session_key = crate::cpu::run(move || SessionKey::new(&reader_key.encryption_key))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)?;
    let header = serde_json::to_vec(&BinaryGetHeader {
        format: BINARY_GET_FORMAT.into(),
        wrapped_session_key: b64::B64(session_key.wrapped.clone()),
    })
    .expect("header serialises");
    let session_key = Arc::new(session_key);
    let writer = framing::FrameWriter::chunked(&header, RESPONSE_CHUNK);
    let key = session_key.clone();
    let first = crate::cpu::run(move || seal_frames(writer, &key, &buffered))
        .await
        .map_err(ApiError::internal)?;
    let octets = (header::CONTENT_TYPE, "application/octet-stream".to_string());
    if !streaming {
        let length = first.iter().map(Bytes::len).sum::<usize>();
        let body = Body::from_stream(futures::stream::iter(
            first.into_iter().map(Ok::<_, std::convert::Infallible>),
        ));
        return Ok(([octets, (header::CONTENT_LENGTH, length.to_string())], body).into_response());
    }
    let (tx, rx) = futures::channel::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let metrics = ctx.state.node.metrics.clone();
    tokio::spawn(stream_rest(reader, session_key, first, tx, metrics));
    Ok(([octets], Body::from_stream(rx)).into_response())
}

/// Sends the chunks already sealed, then reads, seals and sends group after group; a failure
/// (or passing the cap) ends the stream with an error, which aborts the transfer.
async fn stream_rest(
    mut reader: GroupReader,
    session_key: Arc<SessionKey>,
    first: Vec<Bytes>,
    mut tx: futures::channel::mpsc::Sender<Result<Bytes, std::io::Error>>,
    metrics: Arc<crate::metrics::Metrics>,
) {
    use futures::SinkExt;
    for chunk in first {
        if tx.send(Ok(chunk)).await.is_err() {
            return;
        }
    }
    while let Some(group) = reader.next().await {
        let entries = match group {
            Ok(entries) => entries,
            Err(stop) => {
                let why = match stop {
                    Stop::TooLarge => {
                        metrics
                            .requests_refused
                            .with_label_values(&["response_too_large"])
                            .inc();
                        format!("response passes the limit of {} bytes", reader.cap)
                    }
                    Stop::Store(e) => e.to_string(),
                };
                tracing::warn!(reason = %why, "streamed getEntriesBinary response cut off");
                let _ = tx.send(Err(std::io::Error::other(why))).await;
                return;
            }
        };
        let key = session_key.clone();
        let writer = framing::FrameWriter::continuation(RESPONSE_CHUNK);
        let Ok(chunks) = crate::cpu::run(move || seal_frames(writer, &key, &entries)).await else {
            return;
        };
        for chunk in chunks {
            if tx.send(Ok(chunk)).await.is_err() {
                return;
            }
        }
    }
}

/// Writes `entries` as frames: the stored metadata JSON with `iv` spliced in as the first field,
/// the payload copied in and sealed in place — everything written once, into the response's
/// buffers (chunks of whole frames).
fn seal_frames(
    mut writer: framing::FrameWriter,
    session_key: &SessionKey,
    entries: &[RawEntry],
) -> Vec<Bytes> {
    for e in entries {
        let iv = random_iv();
        let sealed_len = e.encrypted_data.len() + AES_TAG_LEN;
        writer.push_in_place(&iv, &e.metadata_json, sealed_len, |buf| {
            let start = buf.len();
            buf.extend_from_slice(&e.encrypted_data);
            session_key.seal_tail(&iv, buf, start);
        });
    }
    writer.finish_chunks()
}
