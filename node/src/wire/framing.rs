//! Binary entry framing of `getEntriesBinary` / `putEntriesBinary` (spec §4.10).
//!
//! `u32be headerLen | header JSON | (u32be metaLen | meta JSON | u32be payloadLen | payload)*`.
//! There is no count: a decoder reads frames until the body ends and refuses truncated lengths.
//!
//! A `getEntriesBinary` frame's metadata JSON is the entry's metadata object with the frame's
//! transport `iv` as one more field: [`with_iv`] writes it, [`split_iv`] takes it out again, both
//! without parsing the rest of the object, so that a node passes stored or upstream metadata through.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use super::b64;

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
    #[error("frame metadata: {0}")]
    Metadata(String),
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

/// A decoded body that arrived in chunks (as a connection delivers it): the header JSON and each
/// frame's `(metadata JSON, payload)`, shared slices of the chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkedFrames {
    pub header: Bytes,
    pub frames: Vec<(Bytes, Bytes)>,
}

/// Decodes a framed body from its chunks: a block inside one chunk is a shared slice of it, only
/// a block that straddles chunks is copied. Refuses truncated lengths as [`decode`] does.
pub fn decode_chunks(chunks: Vec<Bytes>) -> Result<ChunkedFrames, FramingError> {
    let mut reader = ChunkReader::new(chunks);
    let header = reader.block()?;
    let mut frames = Vec::new();
    while reader.remaining > 0 {
        let meta = reader.block()?;
        let payload = reader.block()?;
        frames.push((meta, payload));
    }
    Ok(ChunkedFrames { header, frames })
}

struct ChunkReader {
    chunks: VecDeque<Bytes>,
    offset: usize,
    remaining: usize,
}

impl ChunkReader {
    fn new(chunks: Vec<Bytes>) -> Self {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(Bytes::len).sum();
        ChunkReader {
            chunks,
            offset: 0,
            remaining,
        }
    }

    fn take(&mut self, len: usize) -> Result<Bytes, FramingError> {
        if len > self.remaining {
            return Err(FramingError::Truncated {
                offset: self.offset,
                needed: len,
                available: self.remaining,
            });
        }
        self.offset += len;
        self.remaining -= len;
        let mut joined: Option<BytesMut> = None;
        let mut wanted = len;
        while wanted > 0 {
            let front = self
                .chunks
                .front_mut()
                .expect("remaining counts the chunks' bytes");
            let part = front.split_to(wanted.min(front.len()));
            if front.is_empty() {
                self.chunks.pop_front();
            }
            wanted -= part.len();
            match (&mut joined, wanted) {
                // The whole block lies in one chunk: share it.
                (None, 0) => return Ok(part),
                (None, _) => {
                    let mut buf = BytesMut::with_capacity(len);
                    buf.extend_from_slice(&part);
                    joined = Some(buf);
                }
                (Some(buf), _) => buf.extend_from_slice(&part),
            }
        }
        Ok(joined.map(BytesMut::freeze).unwrap_or_default())
    }

    fn block(&mut self) -> Result<Bytes, FramingError> {
        let len = self.take(4)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        self.take(len)
    }
}

/// Incremental encoder.
pub struct FrameWriter {
    buf: Vec<u8>,
    /// Set by [`FrameWriter::chunked`]: the size at which the buffer is handed on as a chunk.
    chunk: Option<usize>,
    done: Vec<Bytes>,
}

impl FrameWriter {
    pub fn new(header: &[u8], capacity: usize) -> Self {
        let mut buf = Vec::with_capacity(capacity + 4 + header.len());
        push_block(&mut buf, header);
        FrameWriter {
            buf,
            chunk: None,
            done: Vec::new(),
        }
    }

    /// A writer that hands the body on in chunks of about `chunk` bytes (whole frames each, the
    /// last smaller), [`FrameWriter::finish_chunks`]: a large response is written into buffers
    /// the allocator reuses instead of one fresh buffer of its whole size.
    pub fn chunked(header: &[u8], chunk: usize) -> Self {
        let mut writer = FrameWriter::new(header, chunk_capacity(chunk));
        writer.chunk = Some(chunk);
        writer
    }

    /// A chunked writer of further frames of a body whose header (and first frames) another
    /// writer wrote: a streamed response written group by group.
    pub fn continuation(chunk: usize) -> Self {
        FrameWriter {
            buf: Vec::with_capacity(chunk_capacity(chunk)),
            chunk: Some(chunk),
            done: Vec::new(),
        }
    }

    /// Hands the buffer on as a chunk once it is full (chunked writers only).
    fn end_frame(&mut self) {
        if let Some(chunk) = self.chunk {
            if self.buf.len() >= chunk {
                let full =
                    std::mem::replace(&mut self.buf, Vec::with_capacity(chunk_capacity(chunk)));
                self.done.push(full.into());
            }
        }
    }

    /// The body's chunks, in order (see [`FrameWriter::chunked`]).
    pub fn finish_chunks(mut self) -> Vec<Bytes> {
        if !self.buf.is_empty() {
            self.done.push(self.buf.into());
        }
        self.done
    }

    pub fn push(&mut self, meta: &[u8], payload: &[u8]) {
        push_block(&mut self.buf, meta);
        push_block(&mut self.buf, payload);
        self.end_frame();
    }

    /// Pushes a frame written in place: its metadata JSON with `iv` spliced in (as [`with_iv`]),
    /// then its payload, appended by `write_payload` to the body buffer after the payload's length
    /// prefix — `payload_len` bytes exactly (for example a plaintext copied in and sealed there).
    pub fn push_in_place(
        &mut self,
        iv: &[u8],
        metadata_json: &[u8],
        payload_len: usize,
        write_payload: impl FnOnce(&mut Vec<u8>),
    ) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        write_with_iv(&mut self.buf, iv, metadata_json);
        let meta_len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&meta_len.to_be_bytes());
        self.buf
            .extend_from_slice(&(payload_len as u32).to_be_bytes());
        let start = self.buf.len();
        write_payload(&mut self.buf);
        assert_eq!(
            self.buf.len() - start,
            payload_len,
            "a frame's payload must be as long as announced"
        );
        self.end_frame();
    }

    pub fn finish(self) -> Vec<u8> {
        assert!(
            self.done.is_empty(),
            "a chunked writer ends with finish_chunks"
        );
        self.buf
    }
}

/// A chunk buffer's capacity: the chunk size and room for the frame that crosses it.
fn chunk_capacity(chunk: usize) -> usize {
    chunk + 4096
}

fn push_block(buf: &mut Vec<u8>, block: &[u8]) {
    buf.extend_from_slice(&(block.len() as u32).to_be_bytes());
    buf.extend_from_slice(block);
}

/// `metadata_json` (an object) with `"iv"` spliced in as its first field.
pub fn with_iv(iv: &[u8], metadata_json: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(metadata_json.len() + iv.len() * 2 + 10);
    write_with_iv(&mut out, iv, metadata_json);
    out
}

fn write_with_iv(out: &mut Vec<u8>, iv: &[u8], metadata_json: &[u8]) {
    let rest = metadata_json.get(1..).unwrap_or_default();
    out.extend_from_slice(b"{\"iv\":\"");
    out.extend_from_slice(b64::encode(iv).as_bytes());
    out.push(b'"');
    if rest.iter().any(|b| !b.is_ascii_whitespace() && *b != b'}') {
        out.push(b',');
    }
    out.extend_from_slice(rest);
}

/// The transport IV of a frame's metadata JSON and the metadata object without it. The IV written
/// first (as [`with_iv`] does) or last (as the reference server does) is cut out of the text; any
/// other layout is parsed and re-serialised. The rest is not validated here: whoever reads the
/// metadata parses it.
pub fn split_iv(meta: &[u8]) -> Result<(Vec<u8>, Vec<u8>), FramingError> {
    let iv_text = |text: &[u8]| -> Option<Vec<u8>> {
        let text = std::str::from_utf8(text).ok()?;
        b64::decode(text).ok()
    };
    const FIRST: &[u8] = b"{\"iv\":\"";
    if let Some(rest) = meta.strip_prefix(FIRST) {
        if let Some(end) = rest.iter().position(|&b| b == b'"') {
            if rest.get(end + 1) == Some(&b',') {
                if let Some(iv) = iv_text(&rest[..end]) {
                    let mut object = Vec::with_capacity(rest.len() - end);
                    object.push(b'{');
                    object.extend_from_slice(&rest[end + 2..]);
                    return Ok((iv, object));
                }
            }
        }
    }
    const LAST: &[u8] = b",\"iv\":\"";
    if let Some(body) = meta.strip_suffix(b"\"}") {
        if let Some(start) = body.windows(LAST.len()).rposition(|w| w == LAST) {
            let text = &body[start + LAST.len()..];
            if !text.contains(&b'"') {
                if let Some(iv) = iv_text(text) {
                    let mut object = body[..start].to_vec();
                    object.push(b'}');
                    return Ok((iv, object));
                }
            }
        }
    }
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(meta).map_err(|e| FramingError::Metadata(e.to_string()))?;
    let iv = match object.remove("iv") {
        Some(serde_json::Value::String(text)) => {
            b64::decode(&text).map_err(|e| FramingError::Metadata(format!("iv: {e}")))?
        }
        _ => return Err(FramingError::Metadata("no iv string".into())),
    };
    let object = serde_json::to_vec(&object).expect("a JSON map serialises");
    Ok((iv, object))
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

    /// `body` cut at every position in `cuts` (sorted, inside the body).
    fn chunked(body: &[u8], cuts: &[usize]) -> Vec<Bytes> {
        let mut chunks = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([body.len()].iter()) {
            chunks.push(Bytes::copy_from_slice(&body[at..cut]));
            at = cut;
        }
        chunks
    }

    #[test]
    fn chunked_bodies_decode_as_the_whole_body_does() {
        let mut writer = FrameWriter::new(b"{\"format\":\"x\"}", 64);
        writer.push(b"{\"id\":\"a\"}", b"payload-a");
        writer.push(b"{\"id\":\"b\"}", b"");
        writer.push(b"{\"id\":\"c\"}", &[7u8; 300]);
        let body = writer.finish();
        let whole = decode(&body).unwrap();
        let expected = |framed: &ChunkedFrames| {
            assert_eq!(framed.header.as_ref(), whole.header);
            let frames: Vec<(&[u8], &[u8])> = framed
                .frames
                .iter()
                .map(|(m, p)| (m.as_ref(), p.as_ref()))
                .collect();
            assert_eq!(frames, whole.frames);
        };
        // One chunk, a cut at every position, and cuts everywhere (1-byte chunks, empty ones).
        expected(&decode_chunks(vec![Bytes::from(body.clone())]).unwrap());
        for cut in 1..body.len() {
            expected(&decode_chunks(chunked(&body, &[cut])).unwrap());
        }
        let everywhere: Vec<usize> = (0..=body.len()).collect();
        expected(&decode_chunks(chunked(&body, &everywhere)).unwrap());
        // A block inside one chunk shares it; one straddling two chunks is joined.
        let one = Bytes::from(body.clone());
        let start = one.as_ptr() as usize;
        let shared = decode_chunks(vec![one.clone()]).unwrap();
        let payload_c = shared.frames[2].1.as_ptr() as usize;
        assert!(payload_c > start && payload_c < start + body.len());
        let straddling = decode_chunks(chunked(&body, &[body.len() - 100])).unwrap();
        assert_eq!(straddling.frames[2].1.as_ref(), &[7u8; 300][..]);
    }

    #[test]
    fn a_chunked_writer_writes_the_same_body_in_whole_frames() {
        let write = |writer: &mut FrameWriter| {
            // Frames pushed both ways, so that both hand full buffers on.
            for n in 0..50u8 {
                let meta = format!("{{\"id\":\"e{n}\"}}");
                let payload = vec![n; 100 + n as usize];
                if n % 2 == 0 {
                    writer.push(&with_iv(&[n; 12], meta.as_bytes()), &payload);
                } else {
                    writer.push_in_place(&[n; 12], meta.as_bytes(), payload.len(), |buf| {
                        buf.extend_from_slice(&payload)
                    });
                }
            }
        };
        let mut whole = FrameWriter::new(b"{}", 0);
        write(&mut whole);
        let whole = whole.finish();
        let mut chunked = FrameWriter::chunked(b"{}", 1000);
        write(&mut chunked);
        let chunks = chunked.finish_chunks();
        assert!(chunks.len() > 5);
        assert_eq!(chunks.concat(), whole);
        let (last, full) = chunks.split_last().unwrap();
        assert!(full.iter().all(|c| c.len() >= 1000) && !last.is_empty());
        // Each chunk holds whole frames (those after the first decode alone, behind an empty
        // header) and is handed on at the first frame that reaches the chunk size.
        for (i, chunk) in full.iter().enumerate() {
            let mut framed_alone = if i == 0 { Vec::new() } else { vec![0; 4] };
            framed_alone.extend_from_slice(chunk);
            let frames = decode(&framed_alone).unwrap().frames;
            let (meta, payload) = frames.last().unwrap();
            assert!(chunk.len() - frame_size(meta.len(), payload.len()) < 1000);
        }
        let mut framed_alone = vec![0; 4];
        framed_alone.extend_from_slice(last);
        assert!(decode(&framed_alone).is_ok());
    }

    #[test]
    fn truncated_chunked_bodies_are_refused() {
        let mut writer = FrameWriter::new(b"{}", 16);
        writer.push(b"{}", b"0123456789");
        let body = writer.finish();
        // Every prefix decodes (a header alone is a body without frames) or fails as the
        // whole-body decoder does, with the same offsets.
        let mut refused = 0;
        for end in 1..body.len() {
            let cut = &body[..end];
            let chunks = chunked(cut, &[end / 2]);
            match decode(cut) {
                Ok(whole) => {
                    let framed = decode_chunks(chunks).unwrap();
                    assert_eq!(framed.header.as_ref(), whole.header);
                    assert_eq!(framed.frames.len(), whole.frames.len());
                }
                Err(e) => {
                    assert_eq!(decode_chunks(chunks).unwrap_err(), e, "{end} bytes");
                    refused += 1;
                }
            }
        }
        assert_eq!(refused, body.len() - 2, "all but the header-only prefix");
        assert!(decode_chunks(Vec::new()).is_err(), "no header");
    }

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
    fn the_iv_is_spliced_in_and_split_out_in_every_layout() {
        let iv = [7u8; 12];
        let object = br#"{"id":"a","note":"iv \",\"iv\":\"x","n":1}"#;
        let framed = with_iv(&iv, object);
        let parsed: serde_json::Value = serde_json::from_slice(&framed).unwrap();
        assert_eq!(parsed["iv"], b64::encode(&iv));
        assert_eq!(parsed["id"], "a");
        assert_eq!(split_iv(&framed).unwrap(), (iv.to_vec(), object.to_vec()));
        // Last, as the reference server writes it.
        let last = br#"{"id":"a","n":1,"iv":"BwcHBwcHBwcHBwcH"}"#;
        let (got, rest) = split_iv(last).unwrap();
        assert_eq!(
            (got, rest.as_slice()),
            (iv.to_vec(), &br#"{"id":"a","n":1}"#[..])
        );
        // Anywhere else: parsed.
        let middle = br#"{"id":"a", "iv" : "BwcHBwcHBwcHBwcH", "n":1}"#;
        let (got, rest) = split_iv(middle).unwrap();
        assert_eq!(got, iv.to_vec());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&rest).unwrap(),
            serde_json::json!({"id": "a", "n": 1})
        );
        // An empty object gets no dangling comma.
        assert_eq!(split_iv(&with_iv(&iv, b"{}")).unwrap().0, iv.to_vec());
        assert!(serde_json::from_slice::<serde_json::Value>(&with_iv(&iv, b"{}")).is_ok());
        for bad in [
            &br#"{"id":"a"}"#[..],
            br#"{"id":"a","iv":"-_-_"}"#,
            br#"{"id":"a","iv":5}"#,
            b"not json",
        ] {
            assert!(split_iv(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn reference_frames_split_into_iv_and_metadata() {
        let doc = testdata::load("transport.json");
        let sample = &doc["getEntriesBinary"];
        for frame in sample["frames"].as_array().unwrap() {
            let meta = frame["metaJsonText"].as_str().unwrap().as_bytes();
            let expected: serde_json::Value = serde_json::from_slice(meta).unwrap();
            let (iv, rest) = split_iv(meta).unwrap();
            assert_eq!(b64::encode(&iv), expected["iv"].as_str().unwrap());
            let mut without = expected.clone();
            without.as_object_mut().unwrap().remove("iv");
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&rest).unwrap(),
                without
            );
        }
    }

    #[test]
    fn frames_written_in_place_are_the_frames_pushed() {
        let iv = [3u8; 12];
        let meta = br#"{"id":"a"}"#;
        let mut pushed = FrameWriter::new(b"{}", 0);
        pushed.push(&with_iv(&iv, meta), b"payload");
        let mut in_place = FrameWriter::new(b"{}", 0);
        in_place.push_in_place(&iv, meta, 7, |buf| buf.extend_from_slice(b"payload"));
        assert_eq!(in_place.finish(), pushed.finish());
    }

    #[test]
    #[should_panic(expected = "as long as announced")]
    fn a_payload_of_another_length_than_announced_is_a_bug() {
        let mut writer = FrameWriter::new(b"{}", 0);
        writer.push_in_place(&[0; 12], b"{}", 5, |buf| buf.extend_from_slice(b"abc"));
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
