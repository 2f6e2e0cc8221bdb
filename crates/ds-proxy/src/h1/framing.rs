//! How an HTTP/1.1 message's body is delimited (RFC 9112 §6): the `Content-Length` and
//! `Transfer-Encoding` rules, each citing what hyper does where RFC 9112 leaves a choice.
//!
//! Imports nothing of the crate: `fuzz/` compiles this file on its own.

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (answers only).
    Close,
}

/// A Content-Length value: digits only, and every copy of the header the same. Stricter
/// than hyper's client, which also takes a list of equal values (`5, 5`).
pub(crate) fn content_length(prior: Option<u64>, value: &[u8]) -> Result<u64, ()> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 19 {
        return Err(());
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return Err(());
        }
        n = n * 10 + u64::from(b - b'0');
    }
    match prior {
        Some(p) if p != n => Err(()),
        _ => Ok(n),
    }
}

/// The transfer codings of a request's `Transfer-Encoding` fields, all of them together.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct TransferCodings {
    /// `chunked` elements seen.
    pub(crate) chunked: u32,
    /// A coding other than `chunked` (`gzip`, `chunked;x=1`, …) was named.
    pub(crate) other: bool,
    /// A field named no coding at all (`Transfer-Encoding:`): hyper then takes the last
    /// field as not `chunked` and refuses; a parser that skips it reads `chunked` from an
    /// earlier field, so two hops could frame the body apart.
    pub(crate) empty_field: bool,
}

impl TransferCodings {
    pub(crate) fn add(&mut self, value: &[u8]) {
        let mut named = false;
        for coding in value.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            if coding.eq_ignore_ascii_case(b"chunked") {
                self.chunked += 1;
            } else if !coding.is_empty() {
                self.other = true;
            }
            named |= !coding.is_empty();
        }
        self.empty_field |= !named;
    }
}

/// True when the last transfer coding is `chunked`: how an answer is framed (RFC 9112
/// §6.3), whatever codings come before it. hyper looks at the last field only, as here.
/// `None`: the value is not visible ASCII, so not a list of codings at all (hyper would read
/// such an answer to its close, the proxy refuses it).
pub(crate) fn ends_chunked(value: &[u8]) -> Option<bool> {
    if !value
        .iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
    {
        return None;
    }
    Some(
        value
            .rsplit(|&b| b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_lengths_must_agree_and_be_digits() {
        assert_eq!(content_length(None, b"42"), Ok(42));
        assert_eq!(content_length(Some(42), b" 42 "), Ok(42));
        assert!(content_length(Some(42), b"43").is_err());
        assert!(content_length(None, b"+4").is_err());
        assert!(content_length(None, b"").is_err());
        assert!(content_length(None, b"99999999999999999999999").is_err());
    }

    #[test]
    fn only_a_final_chunked_coding_counts() {
        assert_eq!(ends_chunked(b"chunked"), Some(true));
        assert_eq!(ends_chunked(b"gzip, Chunked"), Some(true));
        assert_eq!(ends_chunked(b"chunked, gzip"), Some(false));
        assert_eq!(ends_chunked(b"\xffb, chunked"), None);
    }

    #[test]
    fn request_codings_other_than_chunked_are_noticed() {
        let codings = |values: &[&[u8]]| {
            let mut c = TransferCodings::default();
            values.iter().for_each(|v| c.add(v));
            (c.chunked, c.other, c.empty_field)
        };
        assert_eq!(codings(&[b"Chunked"]), (1, false, false));
        assert_eq!(codings(&[b"gzip, chunked"]), (1, true, false));
        assert_eq!(codings(&[b"gzip", b"chunked"]), (1, true, false));
        assert_eq!(codings(&[b"chunked;ext=1"]), (0, true, false));
        assert_eq!(codings(&[b" , chunked, "]), (1, false, false));
        assert_eq!(codings(&[b"chunked", b"chunked"]), (2, false, false));
        assert_eq!(codings(&[b""]), (0, false, true));
        assert_eq!(codings(&[b"chunked", b" , "]), (1, false, true));
    }
}
