//! Identifier rules of the wire (spec §1.2) and the store address `(tenantId, dbId, storeKind)`.
//!
//! Validation happens before anything touches a store, so path-traversal attempts and other odd ids
//! never reach the storage layer.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Why an identifier was refused; the text is the protocol's error message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("Invalid tenant ID format")]
    Tenant,
    #[error("dbId is required and must be a non-empty string")]
    DbMissing,
    #[error("dbId \"{0}\" must start with a letter or digit and contain only letters, digits, dots, hyphens, and underscores")]
    DbFormat(String),
    #[error("dbId \"{0}\" must be at most 64 characters")]
    DbTooLong(String),
    #[error("entry id must be a non-empty string")]
    EntryIdEmpty,
    #[error("entry id is too long: {encoded} bytes URI-encoded, at most {MAX_ENCODED_ENTRY_ID}")]
    EntryIdTooLong { encoded: usize },
}

/// Longest entry id, URI-encoded (`encodeURIComponent`): the reference's on-disk store keeps every
/// entry in a file named `encodeURIComponent(id) + ".json"` (spec §5.3), and no Linux file system
/// takes a name longer than 255 bytes, so the reference server cannot hold a longer id. Ids a
/// MindooDB client makes are far shorter (`<docId>_d_<8 hex>_<64 hex>`, about 100 bytes).
pub const MAX_ENCODED_ENTRY_ID: usize = 255 - ".json".len();

/// Length of `encodeURIComponent(text)`: unreserved ASCII stays one byte, every other byte of the
/// UTF-8 text becomes `%XX`.
fn uri_encoded_len(text: &str) -> usize {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.!~*'()".contains(&b) {
                1
            } else {
                3
            }
        })
        .sum()
}

/// Validates an entry id: what the reference server can store (non-empty, at most
/// [`MAX_ENCODED_ENTRY_ID`] bytes URI-encoded, hence at most 250 bytes raw). Every path that
/// stores an entry checks this, so the stores' one-byte id lengths can never be misread.
pub fn validate_entry_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::EntryIdEmpty);
    }
    // Cheap bound first: a raw id over the limit is over it encoded too.
    if id.len() > MAX_ENCODED_ENTRY_ID {
        return Err(IdError::EntryIdTooLong {
            encoded: uri_encoded_len(id),
        });
    }
    let encoded = uri_encoded_len(id);
    if encoded > MAX_ENCODED_ENTRY_ID {
        return Err(IdError::EntryIdTooLong { encoded });
    }
    Ok(())
}

/// Lower-cases and validates a tenant id from a path segment: `^[a-z0-9][a-z0-9_-]*$`, 1–64 chars.
pub fn normalize_tenant_id(raw: &str) -> Result<String, IdError> {
    let lower = raw.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'_' || *b == b'-');
    if ok {
        Ok(lower)
    } else {
        Err(IdError::Tenant)
    }
}

/// Validates a database id: `^[A-Za-z0-9][A-Za-z0-9._-]*$`, 1–64 chars.
pub fn validate_db_id(raw: &str) -> Result<(), IdError> {
    if raw.is_empty() {
        return Err(IdError::DbMissing);
    }
    let bytes = raw.as_bytes();
    let well_formed = bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !well_formed {
        return Err(IdError::DbFormat(raw.to_string()));
    }
    if bytes.len() > 64 {
        return Err(IdError::DbTooLong(raw.to_string()));
    }
    Ok(())
}

/// The two stores every database has (spec §1.1): separate receiptOrder, epoch and bloom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    Docs,
    Attachments,
}

impl StoreKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StoreKind::Docs => "docs",
            StoreKind::Attachments => "attachments",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "docs" => Some(StoreKind::Docs),
            "attachments" => Some(StoreKind::Attachments),
            _ => None,
        }
    }
}

impl fmt::Display for StoreKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Address of one store. Construct through [`StoreId::new`] so the ids are always valid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoreId {
    pub tenant_id: String,
    pub db_id: String,
    pub kind: StoreKind,
}

impl StoreId {
    pub fn new(tenant_id: &str, db_id: &str, kind: StoreKind) -> Result<Self, IdError> {
        let tenant_id = normalize_tenant_id(tenant_id)?;
        validate_db_id(db_id)?;
        Ok(StoreId {
            tenant_id,
            db_id: db_id.to_string(),
            kind,
        })
    }
}

impl fmt::Display for StoreId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.tenant_id, self.db_id, self.kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_ids_are_lowercased_and_checked() {
        assert_eq!(normalize_tenant_id("Acme-1").unwrap(), "acme-1");
        assert_eq!(normalize_tenant_id("bad.tenant"), Err(IdError::Tenant));
        assert_eq!(normalize_tenant_id("_x"), Err(IdError::Tenant));
        assert_eq!(normalize_tenant_id(""), Err(IdError::Tenant));
        assert!(normalize_tenant_id(&"a".repeat(65)).is_err());
        assert!(normalize_tenant_id(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn entry_ids_are_what_the_reference_store_can_name_a_file_after() {
        let client_made = "65a1b2c3d4e5f60718293a4b_d_0a1b2c3d_".to_string() + &"f".repeat(64);
        assert!(validate_entry_id(&client_made).is_ok());
        assert_eq!(validate_entry_id(""), Err(IdError::EntryIdEmpty));
        assert!(validate_entry_id(&"a".repeat(250)).is_ok());
        assert_eq!(
            validate_entry_id(&"a".repeat(251)),
            Err(IdError::EntryIdTooLong { encoded: 251 })
        );
        assert_eq!(
            validate_entry_id(&"a".repeat(300)),
            Err(IdError::EntryIdTooLong { encoded: 300 })
        );
        // Escaped bytes count three: 84 × "/" is 252 encoded.
        assert!(validate_entry_id(&"/".repeat(83)).is_ok());
        assert_eq!(
            validate_entry_id(&"/".repeat(84)),
            Err(IdError::EntryIdTooLong { encoded: 252 })
        );
        // "é" is two UTF-8 bytes, six encoded.
        assert_eq!(uri_encoded_len("é!~*'()"), 12);
    }

    #[test]
    fn db_ids_refuse_traversal_and_odd_characters() {
        assert!(validate_db_id("Contacts.v2_x-y").is_ok());
        assert_eq!(
            validate_db_id("../etc").unwrap_err().to_string(),
            "dbId \"../etc\" must start with a letter or digit and contain only letters, digits, dots, hyphens, and underscores"
        );
        assert!(validate_db_id("a/b").is_err());
        assert!(validate_db_id("a\0").is_err());
        assert_eq!(validate_db_id(""), Err(IdError::DbMissing));
        assert!(validate_db_id(&"a".repeat(65)).is_err());
    }
}
