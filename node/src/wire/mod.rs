//! Wire types of the MindooDB sync protocol (sync-v5): one definition for the server, the client side
//! (remote stores, tests, CLI) and the codecs. Request bodies tolerate unknown fields (the reference
//! client adds `tenantId` everywhere); response bodies serialise keys in the reference's order.

pub mod b64;
pub mod entry;
pub mod framing;
pub mod ids;

use serde::{Deserialize, Serialize};

pub use entry::{
    content_hash, has_content_hash, AttachmentRef, Entry, EntryMetadata, RecordKeys, WireEntry,
};
pub use ids::{StoreId, StoreKind};

/// Protocol version this node speaks.
pub const PROTOCOL_VERSION: &str = "sync-v5";
/// Operations served by `POST /:tenantId/sync/:storeKind/:op`.
pub const POST_OPERATIONS: &[&str] = &[
    "findNewEntries",
    "findNewEntriesForDoc",
    "findEntries",
    "scanEntriesSince",
    "getStoreHead",
    "getIdBloomSummary",
    "getCompactionStatus",
    "getEntries",
    "getEntriesBinary",
    "putEntriesBinary",
    "getEntryMetadata",
    "putEntries",
    "hasEntries",
    "resolveDependencies",
    "planDocumentMaterialization",
    "planDocumentMaterializationBatch",
    "planAttachmentReadByWalkingMetadata",
];

/// Whether `op` names an operation of the sync routes (POST or GET).
pub fn is_known_operation(op: &str) -> bool {
    POST_OPERATIONS.contains(&op) || matches!(op, "capabilities" | "getAllIds" | "events")
}

/// Largest page `scanEntriesSince` returns (`MAX_SCAN_PAGE_SIZE`).
pub const MAX_SCAN_PAGE: usize = 1000;
/// Cap on id arrays in requests (`hasEntries`, `getEntries`, `findNewEntries`, …).
pub const MAX_IDS_PER_REQUEST: usize = 100_000;
/// Cap on entries per push.
pub const MAX_ENTRIES_PER_PUSH: usize = 10_000;
/// `format` of a `getEntriesBinary` response header.
pub const BINARY_GET_FORMAT: &str = "mdb-entries-v2";
/// `format` of a `putEntriesBinary` request header.
pub const BINARY_PUT_FORMAT: &str = "mdb-put-v2";

/// `{"error": "..."}`, the body of every failure except `/auth/authenticate`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

// ---------------------------------------------------------------- auth (§2)

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChallengeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_public_key: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub challenge: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AuthenticateRequest {
    #[serde(default)]
    pub challenge: Option<String>,
    #[serde(default)]
    pub signature: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AuthenticateResponse {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

// ---------------------------------------------------------------- capabilities (§3)

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub protocol_version: String,
    #[serde(default)]
    pub supports_cursor_scan: bool,
    #[serde(default)]
    pub supports_id_bloom_summary: bool,
    #[serde(default)]
    pub supports_compaction_status: bool,
    #[serde(default)]
    pub supports_materialization_planning: bool,
    #[serde(default)]
    pub supports_batch_materialization_planning: bool,
    #[serde(default)]
    pub supports_attachment_read_planning: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<i64>,
    #[serde(default)]
    pub supports_access_control_v1: bool,
    #[serde(default)]
    pub supports_remote_wipe_v1: bool,
    #[serde(default)]
    pub supports_store_head: bool,
    #[serde(default)]
    pub supports_session_key_wrap: bool,
    #[serde(default)]
    pub supports_binary_entries: bool,
    #[serde(default)]
    pub supports_change_events: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CapabilitiesResponse {
    pub capabilities: Capabilities,
}

// ---------------------------------------------------------------- sync requests (§4)

/// Query string of the GET endpoints (`capabilities`, `getAllIds`, `events`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DbQuery {
    pub db_id: Option<String>,
}

/// `{dbId}` bodies (`getStoreHead`, `getIdBloomSummary`, `getCompactionStatus`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DbRequest {
    #[serde(default)]
    pub db_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdsRequest {
    #[serde(default)]
    pub db_id: Option<String>,
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_key_wrap: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindNewEntriesRequest {
    #[serde(default)]
    pub db_id: Option<String>,
    #[serde(default)]
    pub have_ids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FindEntriesRequest {
    #[serde(default)]
    pub db_id: Option<String>,
    #[serde(default, rename = "type")]
    pub entry_type: Option<String>,
    #[serde(default)]
    pub creation_date_from: Option<i64>,
    #[serde(default)]
    pub creation_date_until: Option<i64>,
}

/// Exclusive scan position `(receiptOrder, id)`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanCursor {
    pub receipt_order: u64,
    pub id: String,
}

/// Filters of `scanEntriesSince`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanFilters {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_types: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date_from: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_date_until: Option<i64>,
}

impl ScanFilters {
    pub fn matches(&self, meta: &EntryMetadata) -> bool {
        if let Some(doc) = &self.doc_id {
            if &meta.doc_id != doc {
                return false;
            }
        }
        if let Some(types) = &self.entry_types {
            if !types.is_empty() && !types.iter().any(|t| t == &meta.entry_type) {
                return false;
            }
        }
        if let Some(from) = self.creation_date_from {
            if meta.created_at < from {
                return false;
            }
        }
        if let Some(until) = self.creation_date_until {
            if meta.created_at >= until {
                return false;
            }
        }
        true
    }

    pub fn is_empty(&self) -> bool {
        self == &ScanFilters::default()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanRequest {
    #[serde(default)]
    pub db_id: Option<String>,
    #[serde(default)]
    pub cursor: Option<ScanCursor>,
    #[serde(default)]
    pub limit: Option<f64>,
    #[serde(default)]
    pub filters: Option<ScanFilters>,
}

/// Clamps a requested page size per spec §4.4: missing or non-finite → 1000, floored, into `[1, 1000]`.
pub fn clamp_scan_limit(limit: Option<f64>) -> usize {
    match limit {
        Some(l) if l.is_finite() => (l.floor().clamp(1.0, MAX_SCAN_PAGE as f64)) as usize,
        _ => MAX_SCAN_PAGE,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanPage {
    pub entries: Vec<EntryMetadata>,
    pub next_cursor: Option<ScanCursor>,
    pub has_more: bool,
}

/// The shape of a `scanEntriesSince` answer with its entries left unparsed: enough to check an
/// upstream's page before passing its bytes on.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanPageShape {
    pub entries: Vec<serde::de::IgnoredAny>,
    pub next_cursor: Option<ScanCursor>,
    pub has_more: bool,
}

/// A `scanEntriesSince` answer assembled from entries already serialised (JSON objects): the
/// document [`ScanPage`] serialises to, without parsing them.
pub fn scan_page_json<'a>(
    entries: impl IntoIterator<Item = &'a [u8]>,
    next_cursor: Option<&ScanCursor>,
    has_more: bool,
) -> Vec<u8> {
    let mut out = b"{\"entries\":[".to_vec();
    for (i, entry) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(entry);
    }
    out.extend_from_slice(b"],\"nextCursor\":");
    serde_json::to_writer(&mut out, &next_cursor).expect("a cursor serialises");
    out.extend_from_slice(if has_more {
        b",\"hasMore\":true}"
    } else {
        b",\"hasMore\":false}"
    });
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreHead {
    pub epoch: String,
    pub max_receipt_order: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreHeadResponse {
    pub head: StoreHead,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BloomResponse {
    pub summary: crate::bloom::BloomSummary,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdsResponse {
    pub ids: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntriesResponse {
    pub entries: Vec<EntryMetadata>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MetadataRequest {
    #[serde(default)]
    pub db_id: Option<String>,
    #[serde(default)]
    pub id: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MetadataResponse {
    pub entry: Option<EntryMetadata>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolveOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_at_entry_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_depth: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include_start: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolveRequest {
    #[serde(default)]
    pub db_id: Option<String>,
    #[serde(default)]
    pub start_id: Option<String>,
    #[serde(default)]
    pub options: Option<ResolveOptions>,
}

/// `getCompactionStatus` figures (spec §7.4).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactionStatus {
    pub enabled: bool,
    pub compaction_min_files: i64,
    pub compaction_max_bytes: i64,
    pub total_compactions: u64,
    pub total_compacted_files: u64,
    pub total_compacted_bytes: u64,
    pub total_compaction_duration_ms: u64,
    pub last_compaction_at: Option<i64>,
    pub last_compacted_files: u64,
    pub last_compacted_bytes: u64,
    pub last_compaction_duration_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompactionResponse {
    pub status: CompactionStatus,
}

// ---------------------------------------------------------------- getEntries (§4.9)

/// Classic format: metadata plus the hybrid RSA envelope.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RsaWrappedEntry {
    #[serde(flatten)]
    pub metadata: EntryMetadata,
    pub rsa_encrypted_payload: b64::B64,
}

/// Session-key format entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionWrappedEntry {
    #[serde(flatten)]
    pub metadata: EntryMetadata,
    pub iv: b64::B64,
    pub session_encrypted_payload: b64::B64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClassicEntriesResponse {
    pub entries: Vec<RsaWrappedEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionEntriesResponse {
    pub wrapped_session_key: b64::B64,
    pub entries: Vec<SessionWrappedEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BinaryGetHeader {
    pub format: String,
    pub wrapped_session_key: b64::B64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BinaryPutHeader {
    pub format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub db_id: Option<String>,
}

// ---------------------------------------------------------------- putEntries (§4.11)

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PutEntriesRequest {
    #[serde(default)]
    pub db_id: Option<String>,
    #[serde(default)]
    pub entries: Vec<WireEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejection {
    pub id: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PutEntriesResponse {
    pub success: bool,
    #[serde(default)]
    pub receipts: Vec<EntryMetadata>,
    #[serde(default)]
    pub rejected: Vec<Rejection>,
}

// ---------------------------------------------------------------- misc

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServerInfo {
    pub name: String,
    pub signing_public_key: String,
    pub encryption_public_key: String,
    pub max_json_request_body_limit: String,
    pub max_json_request_body_bytes: u64,
    pub timestamping: Timestamping,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Timestamping {
    pub enabled: bool,
    pub providers: Vec<String>,
}

/// Data of an SSE `change` event (spec §4.17).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeEventData {
    pub db_id: String,
    pub store_kind: StoreKind,
    pub epoch: String,
    pub max_receipt_order: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_limit_clamping() {
        assert_eq!(clamp_scan_limit(None), 1000);
        assert_eq!(clamp_scan_limit(Some(0.0)), 1);
        assert_eq!(clamp_scan_limit(Some(-5.0)), 1);
        assert_eq!(clamp_scan_limit(Some(3.9)), 3);
        assert_eq!(clamp_scan_limit(Some(9_007_199_254_740_991.0)), 1000);
        assert_eq!(clamp_scan_limit(Some(f64::NAN)), 1000);
    }

    #[test]
    fn a_page_assembled_from_serialised_entries_is_the_typed_page() {
        let doc = crate::testdata::load("transport.json");
        let frames = doc["getEntriesBinary"]["frames"].as_array().unwrap();
        let entries: Vec<EntryMetadata> = frames
            .iter()
            .map(|f| {
                let meta = f["metaJsonText"].as_str().unwrap().as_bytes();
                serde_json::from_slice(&framing::split_iv(meta).unwrap().1).unwrap()
            })
            .collect();
        let serialised: Vec<Vec<u8>> = entries
            .iter()
            .map(|m| serde_json::to_vec(m).unwrap())
            .collect();
        for (entries, cursor, more) in [
            (
                entries.clone(),
                Some(ScanCursor {
                    receipt_order: 7,
                    id: "x".into(),
                }),
                true,
            ),
            (Vec::new(), None, false),
        ] {
            let typed = ScanPage {
                entries: entries.clone(),
                next_cursor: cursor.clone(),
                has_more: more,
            };
            let parts = if entries.is_empty() {
                &serialised[..0]
            } else {
                &serialised[..]
            };
            let assembled = scan_page_json(parts.iter().map(Vec::as_slice), cursor.as_ref(), more);
            assert_eq!(assembled, serde_json::to_vec(&typed).unwrap());
            let shape: ScanPageShape = serde_json::from_slice(&assembled).unwrap();
            assert_eq!((shape.entries.len(), shape.has_more), (entries.len(), more));
        }
        assert!(serde_json::from_slice::<ScanPageShape>(b"{\"entries\":5}").is_err());
    }
}
