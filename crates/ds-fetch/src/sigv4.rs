//! AWS Signature Version 4 of S3 requests, signed in the `Authorization` header with the
//! payload's SHA-256 in `x-amz-content-sha256` (what S3 and S3-compatible servers accept).
//!
//! Public because the tests sign their own uploads with it against a local S3 server.

use chrono::{DateTime, Utc};
use hmac::{Hmac, KeyInit as _, Mac as _};
use http::{HeaderMap, HeaderValue};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use secrecy::{ExposeSecret as _, SecretString};
use sha2::{Digest as _, Sha256};
use url::Url;

/// The SHA-256 of an empty payload (every GET).
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Everything but the unreserved characters of RFC 3986, as SigV4 encodes.
const STRICT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// An access key: the secret and the session token never show in `Debug`.
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: SecretString,
    pub session_token: Option<SecretString>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Who signs, for which region and service (`s3`).
#[derive(Debug, Clone, Copy)]
pub struct Signer<'a> {
    pub creds: &'a Credentials,
    pub region: &'a str,
    pub service: &'a str,
}

/// An S3 object key as a URL path: each segment encoded, the slashes kept.
pub fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|seg| utf8_percent_encode(seg, STRICT).to_string())
        .collect::<Vec<_>>()
        .join("/")
}

/// A query string component encoded as SigV4 canonicalizes it.
pub fn encode_query(value: &str) -> String {
    utf8_percent_encode(value, STRICT).to_string()
}

/// `YYYYMMDDTHHMMSSZ`, the format of `x-amz-date`.
fn amz_date(time: DateTime<Utc>) -> String {
    time.format("%Y%m%dT%H%M%SZ").to_string()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// The `Host` header value of `url` (the port only when it is not the scheme's default).
pub fn host_header(url: &Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Signs a request to `url`: adds `host`, `x-amz-date`, `x-amz-content-sha256`
/// (`x-amz-security-token` with a session token) and `authorization` to `headers`.
/// Every header already in `headers` is signed too. The URL's path must already be
/// encoded as [`encode_key`] does (S3 signs the path as sent).
pub fn sign(
    method: &str,
    url: &Url,
    headers: &mut HeaderMap,
    payload_sha256: &str,
    signer: &Signer<'_>,
    time: DateTime<Utc>,
) {
    let Signer {
        creds,
        region,
        service,
    } = *signer;
    let date_time = amz_date(time);
    let date = &date_time[..8];
    let mut insert = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(name, v);
        }
    };
    insert("host", &host_header(url));
    insert("x-amz-date", &date_time);
    insert("x-amz-content-sha256", payload_sha256);
    if let Some(token) = &creds.session_token {
        insert("x-amz-security-token", token.expose_secret());
    }

    let mut query: Vec<(String, String)> = url
        .query_pairs()
        .map(|(k, v)| (encode_query(&k), encode_query(&v)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");

    let mut signed: Vec<(String, String)> = headers
        .iter()
        .map(|(name, value)| {
            let value = String::from_utf8_lossy(value.as_bytes());
            // Sequential spaces collapse to one in the canonical form.
            let value = value.split_whitespace().collect::<Vec<_>>().join(" ");
            (name.as_str().to_ascii_lowercase(), value)
        })
        .collect();
    signed.sort();
    let canonical_headers: String = signed.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let signed_headers = signed
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let path = if url.path().is_empty() {
        "/"
    } else {
        url.path()
    };
    let canonical_request = format!(
        "{method}\n{path}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{payload_sha256}"
    );

    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{date_time}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    );
    let secret = format!("AWS4{}", creds.secret_access_key.expose_secret());
    let k_date = hmac(secret.as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    let k_signing = hmac(&k_service, b"aws4_request");
    let signature = hex::encode(hmac(&k_signing, string_to_sign.as_bytes()));
    let authorization = format!(
        "AWS4-HMAC-SHA256 Credential={}/{scope},SignedHeaders={signed_headers},Signature={signature}",
        creds.access_key_id
    );
    if let Ok(mut v) = HeaderValue::from_str(&authorization) {
        v.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    /// The example key of AWS's SigV4 documentation ("Examples: Signature Calculations in
    /// AWS Signature Version 4", S3 API reference).
    fn example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIAIOSFODNN7EXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn example_time() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2013, 5, 24, 0, 0, 0).unwrap()
    }

    fn authorization(headers: &HeaderMap) -> &str {
        headers[http::header::AUTHORIZATION].to_str().unwrap()
    }

    #[test]
    fn get_object_matches_the_aws_documented_example() {
        let url = Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("range", HeaderValue::from_static("bytes=0-9"));
        sign(
            "GET",
            &url,
            &mut headers,
            EMPTY_SHA256,
            &Signer {
                creds: &example_creds(),
                region: "us-east-1",
                service: "s3",
            },
            example_time(),
        );
        assert_eq!(
            authorization(&headers),
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,\
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,\
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
        assert_eq!(headers["x-amz-date"], "20130524T000000Z");
        assert_eq!(headers["host"], "examplebucket.s3.amazonaws.com");
    }

    #[test]
    fn list_objects_matches_the_aws_documented_example() {
        // The query is canonicalized sorted, whatever order the URL has.
        let url =
            Url::parse("https://examplebucket.s3.amazonaws.com/?prefix=J&max-keys=2").unwrap();
        let mut headers = HeaderMap::new();
        sign(
            "GET",
            &url,
            &mut headers,
            EMPTY_SHA256,
            &Signer {
                creds: &example_creds(),
                region: "us-east-1",
                service: "s3",
            },
            example_time(),
        );
        assert!(
            authorization(&headers).ends_with(
                "SignedHeaders=host;x-amz-content-sha256;x-amz-date,\
                 Signature=34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7"
            ),
            "{}",
            authorization(&headers)
        );
    }

    #[test]
    fn session_token_is_signed_and_secrets_stay_out_of_debug() {
        let mut creds = example_creds();
        creds.session_token = Some("the-session-token".into());
        let url = Url::parse("http://127.0.0.1:9000/models/iris.onnx").unwrap();
        let mut headers = HeaderMap::new();
        sign(
            "GET",
            &url,
            &mut headers,
            EMPTY_SHA256,
            &Signer {
                creds: &creds,
                region: "us-east-1",
                service: "s3",
            },
            example_time(),
        );
        assert_eq!(headers["host"], "127.0.0.1:9000");
        assert_eq!(headers["x-amz-security-token"], "the-session-token");
        assert!(authorization(&headers).contains("x-amz-date;x-amz-security-token,"));
        let debug = format!("{creds:?}");
        assert!(!debug.contains("EXAMPLEKEY") && !debug.contains("the-session-token"));
    }

    #[test]
    fn keys_encode_per_segment() {
        assert_eq!(encode_key("a b/c+d/é.onnx"), "a%20b/c%2Bd/%C3%A9.onnx");
        assert_eq!(encode_query("models/v1/"), "models%2Fv1%2F");
    }
}
