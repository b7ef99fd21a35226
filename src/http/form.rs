//! `application/x-www-form-urlencoded` pieces: query parameters read from a request and URLs
//! built for redirects. Only what the proxy's own answers need.

/// Append `s` percent-encoded for a query value (everything but RFC 3986 unreserved bytes).
pub fn encode_into(s: &str, out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// `base` with `params` appended as a query (after `?`, or `&` when `base` has one already).
pub fn url_with_query<'a>(
    base: &str,
    params: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut out = String::with_capacity(base.len() + 256);
    out.push_str(base);
    let mut sep = if base.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        sep = '&';
        encode_into(k, &mut out);
        out.push('=');
        encode_into(v, &mut out);
    }
    out
}

use super::path::hex;

/// Decode one form-urlencoded component (`+` is a space); `None` when it is not UTF-8 or an
/// escape is malformed.
pub fn decode(raw: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = hex(*raw.get(i + 1)?)?;
                let l = hex(*raw.get(i + 2)?)?;
                out.push(h << 4 | l);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The first value of parameter `name` in `query` (with or without its leading `?`), decoded.
/// A parameter that appears but cannot be decoded counts as absent.
pub fn param(query: &[u8], name: &str) -> Option<String> {
    let query = query.strip_prefix(b"?").unwrap_or(query);
    query
        .split(|&b| b == b'&')
        .find_map(|pair| {
            let (k, v) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &pair[..0]),
            };
            (decode(k).as_deref() == Some(name)).then_some(v)
        })
        .and_then(decode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_lookup() {
        let url = url_with_query(
            "https://idp.test/auth?x=1",
            [("redirect_uri", "http://a/b?c=d e"), ("state", "s~_.-")],
        );
        assert_eq!(
            url,
            "https://idp.test/auth?x=1&redirect_uri=http%3A%2F%2Fa%2Fb%3Fc%3Dd%20e&state=s~_.-"
        );
        let q = b"?code=a%2Bb+c&state=xyz&empty&bad=%zz";
        assert_eq!(param(q, "code").as_deref(), Some("a+b c"));
        assert_eq!(param(q, "state").as_deref(), Some("xyz"));
        assert_eq!(param(q, "empty").as_deref(), Some(""));
        assert_eq!(param(q, "bad"), None);
        assert_eq!(param(q, "missing"), None);
        assert_eq!(decode(b"%"), None);
        assert_eq!(decode(b"%ff"), None);
    }
}
