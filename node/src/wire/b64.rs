//! Base64 as the MindooDB wire uses it (spec §0).
//!
//! Encoding is always standard, padded base64. Decoding follows the WHATWG "forgiving" decoder that the
//! reference entry codec uses: ASCII whitespace is ignored and padding is optional, but the base64url
//! characters `-` and `_` are refused so that a malformed field never silently decodes.

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

const FORGIVING: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Error for a field that is not valid standard base64.
#[derive(Debug, thiserror::Error)]
#[error("invalid base64: {0}")]
pub struct Base64Error(String);

/// Standard padded base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Forgiving standard-alphabet decode (see module docs).
pub fn decode(text: &str) -> Result<Vec<u8>, Base64Error> {
    let needs_cleaning = text.bytes().any(|b| b.is_ascii_whitespace());
    let cleaned;
    let input = if needs_cleaning {
        cleaned = text
            .chars()
            .filter(|c| !matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0c'))
            .collect::<String>();
        cleaned.as_str()
    } else {
        text
    };
    FORGIVING
        .decode(input)
        .map_err(|e| Base64Error(e.to_string()))
}

/// Bytes that travel as a base64 string inside JSON.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct B64(pub Vec<u8>);

impl std::fmt::Debug for B64 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "B64({})", encode(&self.0))
    }
}

impl Serialize for B64 {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for B64 {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        decode(&text).map(B64).map_err(serde::de::Error::custom)
    }
}

/// `metadataSignature` semantics: an empty string is decoded as absent (spec §5.1).
pub fn deserialize_optional_nonempty<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<B64>, D::Error> {
    let value = Option::<B64>::deserialize(deserializer)?;
    Ok(value.filter(|b| !b.0.is_empty()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgiving_decoder_accepts_missing_padding_and_whitespace() {
        assert_eq!(decode("aGk=").unwrap(), b"hi");
        assert_eq!(decode("aGk").unwrap(), b"hi");
        assert_eq!(decode(" aG\nk= ").unwrap(), b"hi");
    }

    #[test]
    fn base64url_characters_are_refused() {
        assert!(decode("a-_b").is_err());
        assert!(decode("@@@@").is_err());
    }

    #[test]
    fn encoding_is_padded_standard() {
        assert_eq!(encode(&[0xfb, 0xff]), "+/8=");
    }
}
