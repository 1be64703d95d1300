//! Binary entry framing of `getEntriesBinary` / `putEntriesBinary` (spec §4.10).
//!
//! `u32be headerLen | header JSON | (u32be metaLen | meta JSON | u32be payloadLen | payload)*`.
//! There is no count: a decoder reads frames until the body ends and refuses truncated lengths.

/// A decoded body: the header JSON bytes and each frame's `(metadata JSON, payload)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramedBody<'a> {
    pub header: &'a [u8],
    pub frames: Vec<(&'a [u8], &'a [u8])>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error(
        "binary framing truncated at offset {offset}: needed {needed} bytes, {available} left"
    )]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
}

fn take<'a>(body: &'a [u8], pos: &mut usize, len: usize) -> Result<&'a [u8], FramingError> {
    let available = body.len() - *pos;
    if len > available {
        return Err(FramingError::Truncated {
            offset: *pos,
            needed: len,
            available,
        });
    }
    let slice = &body[*pos..*pos + len];
    *pos += len;
    Ok(slice)
}

fn take_block<'a>(body: &'a [u8], pos: &mut usize) -> Result<&'a [u8], FramingError> {
    let len = take(body, pos, 4)?;
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    take(body, pos, len)
}

/// Decodes a framed body without copying.
pub fn decode(body: &[u8]) -> Result<FramedBody<'_>, FramingError> {
    let mut pos = 0;
    let header = take_block(body, &mut pos)?;
    let mut frames = Vec::new();
    while pos < body.len() {
        let meta = take_block(body, &mut pos)?;
        let payload = take_block(body, &mut pos)?;
        frames.push((meta, payload));
    }
    Ok(FramedBody { header, frames })
}

/// Incremental encoder.
pub struct FrameWriter {
    buf: Vec<u8>,
}

impl FrameWriter {
    pub fn new(header: &[u8], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 4 + header.len());
        push_block(&mut buf, header);
        FrameWriter { buf }
    }

    pub fn push(&mut self, meta: &[u8], payload: &[u8]) {
        push_block(&mut self.buf, meta);
        push_block(&mut self.buf, payload);
    }

    pub fn finish(self) -> Vec<u8> {
        self.buf
    }
}

fn push_block(buf: &mut Vec<u8>, block: &[u8]) {
    buf.extend_from_slice(&(block.len() as u32).to_be_bytes());
    buf.extend_from_slice(block);
}

/// Exact encoded size of one frame (used to partition pushes against a body limit).
pub fn frame_size(meta_len: usize, payload_len: usize) -> usize {
    8 + meta_len + payload_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testdata;
    use crate::wire::b64;

    #[test]
    fn decodes_and_reencodes_reference_bodies() {
        let doc = testdata::load("transport.json");
        for key in ["getEntriesBinary", "putEntriesBinary"] {
            let sample = &doc[key];
            let field = if key == "getEntriesBinary" {
                "responseBodyBase64"
            } else {
                "requestBodyBase64"
            };
            let body = b64::decode(sample[field].as_str().unwrap()).unwrap();
            let decoded = decode(&body).unwrap();
            assert_eq!(
                decoded.header,
                sample["headerJsonText"].as_str().unwrap().as_bytes()
            );
            let frames = sample["frames"].as_array().unwrap();
            assert_eq!(decoded.frames.len(), frames.len());
            let mut writer = FrameWriter::new(decoded.header, body.len());
            for ((meta, payload), expected) in decoded.frames.iter().zip(frames) {
                assert_eq!(*meta, expected["metaJsonText"].as_str().unwrap().as_bytes());
                assert_eq!(
                    payload.to_vec(),
                    b64::decode(expected["payloadBase64"].as_str().unwrap()).unwrap()
                );
                writer.push(meta, payload);
            }
            assert_eq!(writer.finish(), body, "{key} re-encodes identically");
        }
    }

    #[test]
    fn truncated_bodies_are_refused() {
        let mut writer = FrameWriter::new(b"{}", 0);
        writer.push(b"{\"a\":1}", b"xyz");
        let body = writer.finish();
        for cut in 1..body.len() {
            if cut == 6 {
                continue; // exactly the header: a valid body with no frames
            }
            assert!(decode(&body[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode(&body).is_ok());
        assert!(decode(&[]).is_err());
    }
}
