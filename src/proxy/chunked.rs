//! An incremental decoder of HTTP/1.1 chunked bodies (RFC 9112 §7.1) that finds where a
//! body ends and which bytes are data, so the raw bytes can be relayed as they are.
//!
//! The proxy forwards chunked bodies verbatim (chunk sizes, extensions and trailers
//! included) to a peer that speaks HTTP/1.1; the decoder only tells it where the message
//! ends, which byte ranges are data (for the query-log and class-counting prefixes, and for
//! HTTP/1.0 clients that cannot take chunks), and refuses malformed framing before any of
//! it is passed on.

use std::ops::Range;

/// Chunk sizes above this are refused: no model answer is near it, and it keeps the
/// arithmetic far from overflow.
const MAX_CHUNK_SIZE: u64 = 1 << 40;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` seen so far).
    Size { digits: u8 },
    /// After the size: whitespace or a `;extension` up to the CR.
    Extension,
    /// Expecting the LF that ends a size line.
    SizeLf,
    /// Inside a chunk's data.
    Data,
    /// Expecting the CR after a chunk's data.
    DataCr,
    /// Expecting the LF after a chunk's data.
    DataLf,
    /// At the start of a trailer line (after the last chunk): CR here means the end.
    TrailerStart,
    /// Inside a trailer field line.
    Trailer,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body has ended.
    Done,
}

/// Malformed chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub(crate) struct ChunkError(&'static str);

/// The decoder's position within one chunked body.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    state: State,
    /// The size being read, then the data bytes left in the current chunk.
    remaining: u64,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    pub(crate) fn new() -> Self {
        Self {
            state: State::Size { digits: 0 },
            remaining: 0,
        }
    }

    /// True once the last chunk and the trailers have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Reads as much of `input` as belongs to the body, calling `data` with each range of
    /// data bytes (relative to `input`). Returns how many bytes were consumed: all of them,
    /// or fewer when the body ended inside `input` (what follows is the next message).
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let byte = input[i];
            match self.state {
                State::Size { digits } => {
                    if let Some(value) = hex_value(byte) {
                        if digits >= 16 {
                            return Err(ChunkError("chunk size too long"));
                        }
                        self.remaining = self.remaining * 16 + u64::from(value);
                        if self.remaining > MAX_CHUNK_SIZE {
                            return Err(ChunkError("chunk size too large"));
                        }
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError("chunk size is not hexadecimal"));
                    } else {
                        match byte {
                            b'\r' => self.state = State::SizeLf,
                            b';' | b' ' | b'\t' => self.state = State::Extension,
                            _ => return Err(ChunkError("invalid byte after a chunk size")),
                        }
                    }
                    i += 1;
                }
                State::Extension => {
                    match byte {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkError("bare LF in a chunk size line")),
                        _ => {}
                    }
                    i += 1;
                }
                State::SizeLf => {
                    if byte != b'\n' {
                        return Err(ChunkError("expected LF after a chunk size"));
                    }
                    self.state = if self.remaining == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    };
                    i += 1;
                }
                State::Data => {
                    let available = (input.len() - i) as u64;
                    let take =
                        usize::try_from(self.remaining.min(available)).unwrap_or(input.len() - i);
                    data(i..i + take);
                    i += take;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                State::DataCr => {
                    if byte != b'\r' {
                        return Err(ChunkError("chunk data longer than its size"));
                    }
                    self.state = State::DataLf;
                    i += 1;
                }
                State::DataLf => {
                    if byte != b'\n' {
                        return Err(ChunkError("expected LF after chunk data"));
                    }
                    self.state = State::Size { digits: 0 };
                    i += 1;
                }
                State::TrailerStart => {
                    self.state = match byte {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(ChunkError("bare LF in the trailers")),
                        _ => State::Trailer,
                    };
                    i += 1;
                }
                State::Trailer => {
                    match byte {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF in a trailer")),
                        _ => {}
                    }
                    i += 1;
                }
                State::TrailerLf => {
                    if byte != b'\n' {
                        return Err(ChunkError("expected LF after a trailer"));
                    }
                    self.state = State::TrailerStart;
                    i += 1;
                }
                State::EndLf => {
                    if byte != b'\n' {
                        return Err(ChunkError("expected LF at the end of the body"));
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
                State::Done => return Ok(i),
            }
        }
        Ok(i)
    }
}

fn hex_value(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns (data, consumed, done).
    fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        while consumed < input.len() && !decoder.is_done() {
            let end = (consumed + step).min(input.len());
            let piece = &input[consumed..end];
            let used = decoder.decode(piece, |r| out.extend_from_slice(&piece[r]))?;
            consumed += used;
            if used < piece.len() {
                break;
            }
        }
        Ok((out, consumed, decoder.is_done()))
    }

    #[test]
    fn decodes_whole_and_split_bodies_alike() {
        let body = b"5\r\nhello\r\nA;ext=1\r\n0123456789\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, body.len()] {
            let (data, consumed, done) = decode_in_steps(body, step).unwrap();
            assert_eq!(data, b"hello0123456789", "step {step}");
            assert!(done, "step {step}");
            assert_eq!(&body[consumed..], b"NEXT", "step {step}: stops at the end");
        }
    }

    #[test]
    fn an_unfinished_body_is_not_done() {
        let (data, consumed, done) = decode_in_steps(b"5\r\nhel", 2).unwrap();
        assert_eq!(data, b"hel");
        assert_eq!(consumed, 6);
        assert!(!done);
    }

    #[test]
    fn malformed_framing_is_refused() {
        for bad in [
            &b"zz\r\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello world\r\n",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
            b"5\r\nhello\r\n0\r\n\n",
        ] {
            assert!(
                decode_in_steps(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
