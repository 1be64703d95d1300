//! [`RemoteStore`]: a `ContentAddressedStore` whose data lives on another node, spoken to through a
//! [`RemoteSession`]. It negotiates capabilities once per store and prefers the efficient forms
//! (cursor scan, store head, bloom, binary entries with one session key per batch), falling back to
//! the baseline endpoints where the upstream lacks them. Pushes are split to the upstream's body
//! limit and halved again on 413.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::BoxFuture;
use tokio::sync::{broadcast, OnceCell};

use super::session::RemoteSession;
use super::transport::Body;
use crate::bloom::BloomSummary;
use rayon::prelude::*;

use crate::crypto::transport::{hybrid_decrypt, AesKey, SessionKey};
use crate::store::{
    ContentAddressedStore, PushOutcome, PutSummary, RawEntry, StoreChange, StoreError, StoreStats,
};
use crate::wire::*;

/// Ids per `getEntries` request at most (the sync engine's default batch: one RSA unwrap and one
/// round trip per thousand entries; callers bound the bytes by the batches they ask for).
const GET_BATCH: usize = 1000;

pub struct RemoteStore {
    session: Arc<RemoteSession>,
    id: StoreId,
    capabilities: OnceCell<Capabilities>,
    changes: broadcast::Sender<StoreChange>,
}

impl RemoteStore {
    pub fn new(session: Arc<RemoteSession>, id: StoreId) -> Self {
        RemoteStore {
            session,
            id,
            capabilities: OnceCell::new(),
            changes: broadcast::channel(64).0,
        }
    }

    pub fn session(&self) -> &Arc<RemoteSession> {
        &self.session
    }

    fn db(&self) -> DbRequest {
        DbRequest {
            db_id: Some(self.id.db_id.clone()),
        }
    }

    fn unsupported(&self, operation: &'static str) -> StoreError {
        StoreError::Unsupported {
            upstream: self.session.upstream().to_string(),
            operation,
        }
    }

    fn corrupt(&self, detail: String) -> StoreError {
        StoreError::Upstream {
            upstream: self.session.upstream().to_string(),
            message: detail,
            status: None,
            transient: false,
        }
    }

    /// The upstream's capabilities for this store; a server without the endpoint (404) is treated
    /// as the baseline protocol. Transient failures are not cached.
    pub async fn capabilities(&self) -> Result<&Capabilities, StoreError> {
        self.capabilities
            .get_or_try_init(|| async {
                let query = format!("dbId={}", self.id.db_id);
                match self
                    .session
                    .get_json::<CapabilitiesResponse>(self.id.kind, "capabilities", &query)
                    .await
                {
                    Ok(r) => Ok(r.capabilities),
                    Err(StoreError::Upstream {
                        status: Some(404), ..
                    }) => Ok(baseline_capabilities()),
                    Err(e) => Err(e),
                }
            })
            .await
    }

    /// Pushes one batch; splits in halves when the upstream answers 413.
    fn push_batch(&self, entries: Vec<Entry>) -> BoxFuture<'_, Result<PushOutcome, StoreError>> {
        Box::pin(async move {
            let binary = self.capabilities().await?.supports_binary_entries;
            let result = if binary {
                self.push_binary(&entries).await
            } else {
                self.push_json(&entries).await
            };
            match result {
                Err(StoreError::Upstream {
                    status: Some(413), ..
                }) if entries.len() > 1 => {
                    let mut first = entries;
                    let second = first.split_off(first.len() / 2);
                    let mut a = self.push_batch(first).await?;
                    let b = self.push_batch(second).await?;
                    a.receipts.extend(b.receipts);
                    a.rejected.extend(b.rejected);
                    Ok(a)
                }
                other => other,
            }
        })
    }

    async fn push_json(&self, entries: &[Entry]) -> Result<PushOutcome, StoreError> {
        let request = PutEntriesRequest {
            db_id: Some(self.id.db_id.clone()),
            entries: entries.iter().cloned().map(WireEntry::from).collect(),
        };
        let r: PutEntriesResponse = self
            .session
            .post_json(self.id.kind, "putEntries", &request)
            .await?;
        Ok(PushOutcome {
            receipts: r.receipts,
            rejected: r.rejected,
        })
    }

    async fn push_binary(&self, entries: &[Entry]) -> Result<PushOutcome, StoreError> {
        let header = serde_json::to_vec(&BinaryPutHeader {
            format: BINARY_PUT_FORMAT.into(),
            tenant_id: Some(self.id.tenant_id.clone()),
            db_id: Some(self.id.db_id.clone()),
        })
        .expect("header serialises");
        let size = entries
            .iter()
            .map(|e| e.encrypted_data.len() + 1024)
            .sum::<usize>();
        let mut writer = framing::FrameWriter::new(&header, size);
        for e in entries {
            let meta = serde_json::to_vec(&e.metadata).expect("metadata serialises");
            writer.push(&meta, &e.encrypted_data);
        }
        let response = self
            .session
            .post_bytes(
                self.id.kind,
                "putEntriesBinary",
                "application/octet-stream",
                Bytes::from(writer.finish()),
            )
            .await?;
        let r: PutEntriesResponse = self
            .session
            .decode("putEntriesBinary", &response.body.to_bytes())?;
        Ok(PushOutcome {
            receipts: r.receipts,
            rejected: r.rejected,
        })
    }

    /// One `scanEntriesSince` request; the response body.
    async fn post_scan(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<Bytes, StoreError> {
        if !self.capabilities().await?.supports_cursor_scan {
            return Err(self.unsupported("scanEntriesSince"));
        }
        let request = ScanRequest {
            db_id: Some(self.id.db_id.clone()),
            cursor: cursor.cloned(),
            limit: Some(limit.clamp(1, MAX_SCAN_PAGE) as f64),
            filters: (!filters.is_empty()).then(|| filters.clone()),
        };
        let body = Bytes::from(serde_json::to_vec(&request).expect("serialises"));
        let response = self
            .session
            .post_bytes(self.id.kind, "scanEntriesSince", "application/json", body)
            .await?;
        Ok(response.body.to_bytes())
    }

    /// One `getEntriesBinary` request; the response body.
    async fn post_binary(&self, ids: &[String]) -> Result<Body, StoreError> {
        let request = IdsRequest {
            db_id: Some(self.id.db_id.clone()),
            ids: ids.to_vec(),
            session_key_wrap: None,
        };
        let body = Bytes::from(serde_json::to_vec(&request).expect("serialises"));
        let response = self
            .session
            .post_bytes(self.id.kind, "getEntriesBinary", "application/json", body)
            .await?;
        Ok(response.body)
    }

    async fn get_batch(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        let caps = self.capabilities().await?.clone();
        let session = self.session.clone();
        if caps.supports_binary_entries {
            let body = self.post_binary(ids).await?;
            return blocking(move || decode_binary(&session, body, parse_frame)).await;
        }
        let request = IdsRequest {
            db_id: Some(self.id.db_id.clone()),
            ids: ids.to_vec(),
            session_key_wrap: caps.supports_session_key_wrap.then_some(true),
        };
        if caps.supports_session_key_wrap {
            let r: SessionEntriesResponse = self
                .session
                .post_json(self.id.kind, "getEntries", &request)
                .await?;
            return blocking(move || decode_session(&session, r)).await;
        }
        let r: ClassicEntriesResponse = self
            .session
            .post_json(self.id.kind, "getEntries", &request)
            .await?;
        blocking(move || {
            r.entries
                .into_par_iter()
                .map(|e| {
                    let data =
                        hybrid_decrypt(&session.identity().encryption, &e.rsa_encrypted_payload.0)
                            .map_err(|err| transport_error(&session, err))?;
                    Ok(Entry {
                        metadata: e.metadata,
                        encrypted_data: data,
                    })
                })
                .collect()
        })
        .await
    }
}

fn transport_error(session: &RemoteSession, e: impl std::fmt::Display) -> StoreError {
    StoreError::Upstream {
        upstream: session.upstream().to_string(),
        message: format!("cannot remove transport encryption: {e}"),
        status: None,
        transient: false,
    }
}

/// Builds a decoded frame's result from its metadata JSON (iv removed) and opened payload.
type FrameFinish<T> = fn(Vec<u8>, Vec<u8>) -> Result<Option<T>, serde_json::Error>;

/// Decrypts a `getEntriesBinary` body: one RSA operation for the session key, then per frame the
/// IV split off the metadata, AES to open the payload and `finish` to build the result (`None`
/// leaves the frame out).
fn decode_binary<T: Send>(
    session: &RemoteSession,
    body: Body,
    finish: FrameFinish<T>,
) -> Result<Vec<T>, StoreError> {
    let framed =
        framing::decode_chunks(body.into_chunks()).map_err(|e| transport_error(session, e))?;
    let header: BinaryGetHeader =
        serde_json::from_slice(&framed.header).map_err(|e| transport_error(session, e))?;
    let key = AesKey::new(
        &SessionKey::unwrap(
            &session.identity().encryption,
            &header.wrapped_session_key.0,
        )
        .map_err(|e| transport_error(session, e))?,
    );
    let decoded: Vec<Option<T>> = framed
        .frames
        .par_iter()
        .map(|(meta, sealed)| {
            let (iv, metadata) =
                framing::split_iv(meta).map_err(|e| transport_error(session, e))?;
            let data = key
                .open(&iv, sealed)
                .map_err(|e| transport_error(session, e))?;
            finish(metadata, data).map_err(|e| transport_error(session, e))
        })
        .collect::<Result<_, StoreError>>()?;
    Ok(decoded.into_iter().flatten().collect())
}

fn parse_frame(metadata: Vec<u8>, data: Vec<u8>) -> Result<Option<Entry>, serde_json::Error> {
    Ok(Some(Entry {
        metadata: serde_json::from_slice(&metadata)?,
        encrypted_data: data,
    }))
}

/// The metadata stays as the upstream serialised it (whoever serves or stores it parses it); only
/// its id and contentHash are read, and a payload that does not match its hash is left out: raw
/// entries are passed on without the verification a parsed entry gets at ingest.
fn raw_frame(metadata: Vec<u8>, data: Vec<u8>) -> Result<Option<RawEntry>, serde_json::Error> {
    let keys: RecordKeys<'_> = serde_json::from_slice(&metadata)?;
    if !has_content_hash(&data, &keys.content_hash) {
        tracing::warn!(id = %keys.id, "upstream payload does not match its contentHash; left out");
        return Ok(None);
    }
    Ok(Some(RawEntry {
        id: keys.id.as_ref().into(),
        metadata_json: metadata.into(),
        encrypted_data: data.into(),
    }))
}

fn decode_session(
    session: &RemoteSession,
    r: SessionEntriesResponse,
) -> Result<Vec<Entry>, StoreError> {
    let key = AesKey::new(
        &SessionKey::unwrap(&session.identity().encryption, &r.wrapped_session_key.0)
            .map_err(|e| transport_error(session, e))?,
    );
    r.entries
        .into_par_iter()
        .map(|e| {
            let data = key
                .open(&e.iv.0, &e.session_encrypted_payload.0)
                .map_err(|err| transport_error(session, err))?;
            Ok(Entry {
                metadata: e.metadata,
                encrypted_data: data,
            })
        })
        .collect()
}

/// Runs a response's decryption on the CPU pool (its per-entry work spreads over every core).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    crate::cpu::run(f)
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
}

/// What a server without a capabilities endpoint offers: the baseline endpoints only.
pub fn baseline_capabilities() -> Capabilities {
    Capabilities {
        protocol_version: "baseline".into(),
        supports_cursor_scan: false,
        supports_id_bloom_summary: false,
        supports_compaction_status: false,
        supports_materialization_planning: false,
        supports_batch_materialization_planning: false,
        supports_attachment_read_planning: false,
        server_time: None,
        supports_access_control_v1: false,
        supports_remote_wipe_v1: false,
        supports_store_head: false,
        supports_session_key_wrap: false,
        supports_binary_entries: false,
        supports_change_events: false,
    }
}

/// Splits entries into batches whose encoded size stays under `limit` bytes (with room for JSON
/// and base64 overhead), keeping request order.
pub fn split_to_body_limit(entries: Vec<Entry>, limit: u64) -> Vec<Vec<Entry>> {
    // base64 grows payloads by 4/3; metadata records are ~1–2 KiB with PEM keys.
    let budget = (limit as usize).saturating_mul(9) / 10;
    let cost = |e: &Entry| e.encrypted_data.len() * 4 / 3 + 2048;
    let mut batches = Vec::new();
    let mut current = Vec::new();
    let mut size = 0;
    for e in entries {
        let c = cost(&e);
        if !current.is_empty() && size + c > budget {
            batches.push(std::mem::take(&mut current));
            size = 0;
        }
        size += c;
        current.push(e);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[async_trait]
impl ContentAddressedStore for RemoteStore {
    fn id(&self) -> &StoreId {
        &self.id
    }

    /// Forwards the entries; the head is read back from the upstream (one more request: callers
    /// that only need the verdict use [`ContentAddressedStore::push_entries`]).
    async fn put_entries(&self, entries: Vec<Entry>) -> Result<PutSummary, StoreError> {
        let outcome = self.push_entries(entries).await?;
        let head = self.get_store_head().await?;
        Ok(PutSummary {
            inserted: outcome.receipts.into_iter().map(|m| m.id).collect(),
            head,
        })
    }

    async fn push_entries(&self, entries: Vec<Entry>) -> Result<PushOutcome, StoreError> {
        let limit = self.session.body_limit().await;
        let mut outcome = PushOutcome::default();
        for batch in split_to_body_limit(entries, limit) {
            let part = self.push_batch(batch).await?;
            outcome.receipts.extend(part.receipts);
            outcome.rejected.extend(part.rejected);
        }
        Ok(outcome)
    }

    async fn get_entries(&self, ids: &[String]) -> Result<Vec<Entry>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_BATCH) {
            out.extend(self.get_batch(chunk).await?);
        }
        Ok(out)
    }

    /// With binary entries the upstream's metadata JSON is passed on unparsed; otherwise as parsed.
    async fn get_entries_raw(&self, ids: &[String]) -> Result<Vec<RawEntry>, StoreError> {
        if !self.capabilities().await?.supports_binary_entries {
            let entries = self.get_entries(ids).await?;
            return Ok(entries.into_iter().map(RawEntry::from_entry).collect());
        }
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(GET_BATCH) {
            let body = self.post_binary(chunk).await?;
            let session = self.session.clone();
            out.extend(blocking(move || decode_binary(&session, body, raw_frame)).await?);
        }
        Ok(out)
    }

    async fn get_entry_metadata(&self, id: &str) -> Result<Option<EntryMetadata>, StoreError> {
        let request = MetadataRequest {
            db_id: Some(self.id.db_id.clone()),
            id: Some(id.to_string()),
        };
        let r: MetadataResponse = self
            .session
            .post_json(self.id.kind, "getEntryMetadata", &request)
            .await?;
        Ok(r.entry)
    }

    async fn has_entries(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(MAX_IDS_PER_REQUEST) {
            let request = IdsRequest {
                db_id: Some(self.id.db_id.clone()),
                ids: chunk.to_vec(),
                session_key_wrap: None,
            };
            let r: IdsResponse = self
                .session
                .post_json(self.id.kind, "hasEntries", &request)
                .await?;
            out.extend(r.ids);
        }
        Ok(out)
    }

    async fn scan_entries_since(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<ScanPage, StoreError> {
        let body = self.post_scan(cursor, limit, filters).await?;
        self.session.decode("scanEntriesSince", &body)
    }

    /// The upstream's page as it sent it, once its shape is checked.
    async fn scan_entries_since_raw(
        &self,
        cursor: Option<&ScanCursor>,
        limit: usize,
        filters: &ScanFilters,
    ) -> Result<Bytes, StoreError> {
        let body = self.post_scan(cursor, limit, filters).await?;
        let _: ScanPageShape = self.session.decode("scanEntriesSince", &body)?;
        Ok(body)
    }

    async fn get_store_head(&self) -> Result<StoreHead, StoreError> {
        if !self.capabilities().await?.supports_store_head {
            return Err(self.unsupported("getStoreHead"));
        }
        let r: StoreHeadResponse = self
            .session
            .post_json(self.id.kind, "getStoreHead", &self.db())
            .await?;
        Ok(r.head)
    }

    async fn compaction_status(&self) -> Result<CompactionStatus, StoreError> {
        if !self.capabilities().await?.supports_compaction_status {
            return Ok(CompactionStatus::default());
        }
        let r: CompactionResponse = self
            .session
            .post_json(self.id.kind, "getCompactionStatus", &self.db())
            .await?;
        Ok(r.status)
    }

    /// A remote store holds nothing locally.
    async fn stats(&self) -> Result<StoreStats, StoreError> {
        Ok(StoreStats::default())
    }

    fn subscribe_changes(&self) -> broadcast::Receiver<StoreChange> {
        self.changes.subscribe()
    }

    async fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn find_new_entries(
        &self,
        have_ids: &[String],
    ) -> Result<Vec<EntryMetadata>, StoreError> {
        if have_ids.len() > MAX_IDS_PER_REQUEST {
            return Err(self.corrupt(format!(
                "findNewEntries with {} known ids exceeds the protocol's {MAX_IDS_PER_REQUEST}",
                have_ids.len()
            )));
        }
        let request = FindNewEntriesRequest {
            db_id: Some(self.id.db_id.clone()),
            have_ids: have_ids.to_vec(),
            doc_id: None,
        };
        let r: EntriesResponse = self
            .session
            .post_json(self.id.kind, "findNewEntries", &request)
            .await?;
        Ok(r.entries)
    }

    async fn get_all_ids(&self) -> Result<Vec<String>, StoreError> {
        let query = format!("dbId={}", self.id.db_id);
        let r: IdsResponse = self
            .session
            .get_json(self.id.kind, "getAllIds", &query)
            .await?;
        Ok(r.ids)
    }

    async fn get_id_bloom_summary(&self) -> Result<BloomSummary, StoreError> {
        if !self.capabilities().await?.supports_id_bloom_summary {
            return Err(self.unsupported("getIdBloomSummary"));
        }
        let r: BloomResponse = self
            .session
            .post_json(self.id.kind, "getIdBloomSummary", &self.db())
            .await?;
        Ok(r.summary)
    }

    async fn resolve_dependencies(
        &self,
        start_id: &str,
        options: &ResolveOptions,
    ) -> Result<Vec<String>, StoreError> {
        let request = ResolveRequest {
            db_id: Some(self.id.db_id.clone()),
            start_id: Some(start_id.to_string()),
            options: Some(options.clone()),
        };
        let r: IdsResponse = self
            .session
            .post_json(self.id.kind, "resolveDependencies", &request)
            .await?;
        Ok(r.ids)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, size: usize) -> Entry {
        let data = vec![7u8; size];
        Entry {
            metadata: EntryMetadata {
                entry_type: "doc_change".into(),
                id: id.into(),
                content_hash: content_hash(&data),
                doc_id: "d".into(),
                dependency_ids: vec![],
                created_at: 1,
                receipt_order: None,
                created_by_public_key: "k".into(),
                decryption_key_id: "default".into(),
                snapshot_head_hashes: None,
                snapshot_head_entry_ids: None,
                signature: b64::B64(vec![1]),
                metadata_signature: None,
                original_size: size as u64,
                encrypted_size: size as u64,
                received_at: None,
                received_by_public_key: None,
                received_date_signature: None,
                attachment_refs: None,
                provenance: None,
                recipients: None,
                entry_version: None,
            },
            encrypted_data: data,
        }
    }

    #[test]
    fn raw_frames_carry_their_id_and_only_payloads_matching_their_hash() {
        let good = entry("a", 100);
        let json = serde_json::to_vec(&good.metadata).unwrap();
        let raw = raw_frame(json.clone(), good.encrypted_data.clone())
            .unwrap()
            .unwrap();
        assert_eq!(&*raw.id, "a");
        assert_eq!(raw.metadata_json.as_ref(), json.as_slice());
        assert_eq!(raw.encrypted_data.as_ref(), good.encrypted_data.as_slice());
        assert!(
            raw_frame(json, vec![8u8; 100]).unwrap().is_none(),
            "tampered payload"
        );
        assert!(
            raw_frame(b"{\"id\":\"a\"}".to_vec(), vec![]).is_err(),
            "no contentHash"
        );
    }

    #[test]
    fn batches_respect_the_body_limit_and_order() {
        let entries: Vec<Entry> = (0..100).map(|i| entry(&format!("e{i}"), 30_000)).collect();
        let batches = split_to_body_limit(entries, 1024 * 1024);
        assert!(batches.len() > 1);
        let ids: Vec<String> = batches
            .iter()
            .flatten()
            .map(|e| e.metadata.id.clone())
            .collect();
        assert_eq!(ids, (0..100).map(|i| format!("e{i}")).collect::<Vec<_>>());
        for b in &batches {
            let cost: usize = b
                .iter()
                .map(|e| e.encrypted_data.len() * 4 / 3 + 2048)
                .sum();
            assert!(cost <= 1024 * 1024 * 9 / 10);
        }
        // One entry larger than the budget still goes alone (the upstream decides).
        let big = split_to_body_limit(vec![entry("big", 2_000_000), entry("s", 10)], 1024 * 1024);
        assert_eq!(big.len(), 2);
    }
}
