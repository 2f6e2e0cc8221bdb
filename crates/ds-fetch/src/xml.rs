//! Just enough XML for S3's answers (ListObjectsV2 and `<Error>`): the text of named
//! elements, entities decoded. S3 emits flat, predictable documents; no XML crate needed.

/// The text of every `<tag>…</tag>` in `doc`, in order.
pub(crate) fn elements(doc: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(unescape(&after[..end]));
        rest = &after[end + close.len()..];
    }
    out
}

/// The text of the first `<tag>…</tag>` in `doc`.
pub(crate) fn first(doc: &str, tag: &str) -> Option<String> {
    elements(doc, tag).into_iter().next()
}

/// Decodes the five predefined entities and numeric character references.
fn unescape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(amp) = rest.find('&') {
        out.push_str(&rest[..amp]);
        let after = &rest[amp..];
        let Some(semi) = after.find(';') else {
            out.push_str(after);
            return out;
        };
        let entity = &after[1..semi];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" => Some('\''),
            _ => entity
                .strip_prefix("#x")
                .and_then(|h| u32::from_str_radix(h, 16).ok())
                .or_else(|| entity.strip_prefix('#').and_then(|d| d.parse().ok()))
                .and_then(char::from_u32),
        };
        match decoded {
            Some(c) => out.push(c),
            None => out.push_str(&after[..=semi]),
        }
        rest = &after[semi + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_listing_and_an_error() {
        let listing = "<?xml version=\"1.0\"?><ListBucketResult><IsTruncated>true</IsTruncated>\
            <Contents><Key>m/a&amp;b.txt</Key><Size>3</Size></Contents>\
            <Contents><Key>m/sub/&#233;&#x41;.bin</Key></Contents>\
            <NextContinuationToken>tok+/=</NextContinuationToken></ListBucketResult>";
        assert_eq!(elements(listing, "Key"), ["m/a&b.txt", "m/sub/éA.bin"]);
        assert_eq!(first(listing, "IsTruncated").as_deref(), Some("true"));
        assert_eq!(
            first(listing, "NextContinuationToken").as_deref(),
            Some("tok+/=")
        );
        let error = "<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>";
        assert_eq!(first(error, "Code").as_deref(), Some("NoSuchKey"));
        assert_eq!(first(error, "Missing"), None);
        assert_eq!(unescape("a &bogus; &amp"), "a &bogus; &amp");
    }
}
