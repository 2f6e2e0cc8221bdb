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

/// Chunk extensions and trailers together may take this many bytes in one body: as much
/// as hyper and h11, common servers behind the proxy, allow for either, so the proxy does
/// not pass on a body that such a model server would refuse (and the proxy would answer
/// 502 for, blaming the model).
const MAX_METADATA: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size (`digits` seen so far).
    Size { digits: u8 },
    /// Whitespace after the size: more of it, a `;` or the CR may follow.
    SizeWhitespace,
    /// A `;extension` up to the CR.
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
    /// Inside a trailer field's name, up to its colon.
    TrailerName,
    /// Inside a trailer field's value, up to the CR.
    TrailerValue,
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
    /// Bytes of chunk extensions and trailers left before the body is refused.
    metadata_left: usize,
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
            metadata_left: MAX_METADATA,
        }
    }

    /// True once the last chunk and the trailers have been read.
    pub(crate) fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Counts one byte of extensions, trailers or the whitespace before them.
    fn spend_metadata(&mut self) -> Result<(), ChunkError> {
        self.metadata_left = self.metadata_left.checked_sub(1).ok_or(ChunkError(
            "chunk extensions and trailers are longer than 16 KiB",
        ))?;
        Ok(())
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
                        self.state = match byte {
                            b'\r' => State::SizeLf,
                            b';' => State::Extension,
                            b' ' | b'\t' => State::SizeWhitespace,
                            _ => return Err(ChunkError("invalid byte after a chunk size")),
                        };
                    }
                    i += 1;
                }
                // RFC 9112 §7.1.1: whitespace after the size is allowed only before a `;`
                // (and, as hyper allows, before the CR); anything else is refused, not
                // passed on to a model server that would refuse it.
                State::SizeWhitespace => {
                    self.spend_metadata()?;
                    self.state = match byte {
                        b' ' | b'\t' => State::SizeWhitespace,
                        b';' => State::Extension,
                        b'\r' => State::SizeLf,
                        _ => return Err(ChunkError("invalid byte after a chunk size")),
                    };
                    i += 1;
                }
                State::Extension => {
                    self.spend_metadata()?;
                    match byte {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkError("bare LF in a chunk size line")),
                        _ if is_control(byte) => {
                            return Err(ChunkError("control byte in a chunk extension"));
                        }
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
                    self.spend_metadata()?;
                    self.state = match byte {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(ChunkError("bare LF in the trailers")),
                        _ if is_token(byte) => State::TrailerName,
                        _ => return Err(ChunkError("a trailer field must start with its name")),
                    };
                    i += 1;
                }
                // Trailers are header fields (RFC 9112 §7.1.2): a token name, a colon, a
                // value without control bytes but HTAB.
                State::TrailerName => {
                    self.spend_metadata()?;
                    self.state = match byte {
                        b':' => State::TrailerValue,
                        _ if is_token(byte) => State::TrailerName,
                        _ => return Err(ChunkError("invalid byte in a trailer field name")),
                    };
                    i += 1;
                }
                State::TrailerValue => {
                    self.spend_metadata()?;
                    match byte {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError("bare LF in a trailer")),
                        _ if is_control(byte) => {
                            return Err(ChunkError("control byte in a trailer field value"));
                        }
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

/// Control bytes other than HTAB (CR and LF are handled where they may appear).
fn is_control(byte: u8) -> bool {
    (byte < 0x20 && byte != b'\t') || byte == 0x7f
}

/// RFC 9110 §5.6.2 `tchar`.
fn is_token(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
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
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

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
            // Whitespace after a size only before `;` or CR (hyper and h11 refuse these).
            b"5 x=1\r\nhello\r\n0\r\n\r\n",
            b"5 \t 5\r\nhello\r\n0\r\n\r\n",
            b"5;a\x00b\r\nhello\r\n0\r\n\r\n",
            // Trailers are field lines: a token name, a colon, no control bytes.
            b"5\r\nhello\r\n0\r\nnocolon\r\n\r\n",
            b"5\r\nhello\r\n0\r\n: no name\r\n\r\n",
            b"5\r\nhello\r\n0\r\nbad name: 1\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t: a\x01b\r\n\r\n",
        ] {
            assert!(
                decode_in_steps(bad, 1).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn extensions_and_trailers_that_a_server_accepts_pass() {
        for good in [
            &b"5 ;x=1\r\nhello\r\n0\r\n\r\n"[..],
            b"5  \r\nhello\r\n0\r\n\r\n",
            b"5\t;name=\"quoted value\"\r\nhello\r\n0;last\r\n\r\n",
            b"5\r\nhello\r\n0\r\nx-t: 1\r\nX-Empty:\r\nx-obs: caf\xc3\xa9\tok\r\n\r\n",
        ] {
            let (data, consumed, done) = decode_in_steps(good, 1).unwrap_or_else(|e| {
                panic!("{}: {e}", String::from_utf8_lossy(good));
            });
            assert_eq!(data, b"hello");
            assert_eq!(consumed, good.len());
            assert!(done);
        }
    }

    #[test]
    fn extensions_and_trailers_are_bounded() {
        let mut long_extension = b"5;".to_vec();
        long_extension.extend(std::iter::repeat_n(b'x', MAX_METADATA));
        long_extension.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert!(decode_in_steps(&long_extension, 4096).is_err());
        let mut many_trailers = b"0\r\n".to_vec();
        for i in 0..2000 {
            many_trailers.extend_from_slice(format!("x-{i}: 1\r\n").as_bytes());
        }
        many_trailers.extend_from_slice(b"\r\n");
        assert!(decode_in_steps(&many_trailers, 4096).is_err());
    }

    /// A chunked encoding of `data` in random pieces, with random extensions and trailers.
    fn encode(rng: &mut StdRng, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = data;
        while !rest.is_empty() {
            let size = rng.random_range(1..=rest.len().min(300));
            let digits = if rng.random_bool(0.5) {
                format!("{size:x}")
            } else {
                format!("{size:04X}")
            };
            out.extend_from_slice(digits.as_bytes());
            if rng.random_bool(0.3) {
                out.extend_from_slice(b" ; ext=\"v\"");
            }
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(&rest[..size]);
            out.extend_from_slice(b"\r\n");
            rest = &rest[size..];
        }
        out.extend_from_slice(b"0\r\n");
        for i in 0..rng.random_range(0..3) {
            out.extend_from_slice(format!("x-trailer-{i}: {i}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// Feeds `input` in random pieces, as the network would.
    fn decode_in_random_pieces(
        rng: &mut StdRng,
        input: &[u8],
    ) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        while consumed < input.len() && !decoder.is_done() {
            let end = (consumed + rng.random_range(1..=64)).min(input.len());
            let piece = &input[consumed..end];
            let used = decoder.decode(piece, |r| out.extend_from_slice(&piece[r]))?;
            consumed += used;
        }
        Ok((out, consumed, decoder.is_done()))
    }

    #[test]
    fn random_bodies_decode_the_same_however_the_network_splits_them() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..300 {
            let data: Vec<u8> = (0..rng.random_range(0..2000))
                .map(|_| rng.random())
                .collect();
            let mut body = encode(&mut rng, &data);
            let body_len = body.len();
            body.extend_from_slice(b"GET /next HTTP/1.1\r\n");
            let (whole, consumed, done) = decode_in_steps(&body, body.len()).unwrap();
            assert_eq!(
                (whole.as_slice(), consumed, done),
                (&data[..], body_len, true)
            );
            let split = decode_in_random_pieces(&mut rng, &body).unwrap();
            assert_eq!(split, (data, body_len, true));
        }
    }

    #[test]
    fn random_damage_is_judged_the_same_however_the_network_splits_it() {
        let mut rng = StdRng::seed_from_u64(11);
        for _ in 0..2000 {
            let data: Vec<u8> = (0..rng.random_range(0..200)).map(|_| b'a').collect();
            let mut body = encode(&mut rng, &data);
            let at = rng.random_range(0..body.len());
            match rng.random_range(0..3) {
                0 => body[at] = b"\r\n ;:\t\x00zZ9"[rng.random_range(0..10)],
                1 => drop(body.remove(at)),
                _ => body.truncate(at),
            }
            let whole = decode_in_steps(&body, body.len().max(1));
            let split = decode_in_random_pieces(&mut rng, &body);
            assert_eq!(
                whole.is_ok(),
                split.is_ok(),
                "{}",
                String::from_utf8_lossy(&body)
            );
            if let (Ok(whole), Ok(split)) = (whole, split) {
                assert_eq!(whole, split, "{}", String::from_utf8_lossy(&body));
            }
        }
    }
}
