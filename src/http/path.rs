//! Request paths as routes see them. A route protects a path only if the upstream reads the same
//! path: `/x/../api`, `//api` or `/%61pi` must not slip past a route for `/api/*` to a
//! catch-all and then be read as `/api` upstream. So the path is normalised once, matched, and
//! forwarded in that same form; what cannot be normalised without guessing is refused.

use crate::error::ProxyError;

/// The value of one hexadecimal digit.
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Whether `raw` needs any work (the common case is a clean path, checked in one pass).
fn is_normal(raw: &[u8]) -> bool {
    let mut prev = 0u8;
    for (i, &b) in raw.iter().enumerate() {
        match b {
            b'%' | b'\\' => return false,
            b'/' if prev == b'/' => return false,
            b'.' if prev == b'/' => {
                // "/." followed by "/", end, or "./" or "." at the end: a dot segment.
                let rest = &raw[i + 1..];
                if rest.is_empty()
                    || rest[0] == b'/'
                    || (rest[0] == b'.' && (rest.len() == 1 || rest[1] == b'/'))
                {
                    return false;
                }
            }
            _ => {}
        }
        prev = b;
    }
    true
}

/// Normalise `raw` (a path starting with `/`, or empty for `/`): decode percent-escapes of
/// unreserved characters, upper-case the others, merge repeated slashes and resolve `.` and `..`
/// segments. Returns `false` when `raw` is already normal (and `out` is untouched), `true` when `out` holds the
/// normal form. Encoded `/`, `\` or NUL, any `\`, a malformed escape, or `..` above the root are
/// refused, as upstreams disagree on what they mean.
pub fn normalize(raw: &[u8], out: &mut Vec<u8>) -> Result<bool, ProxyError> {
    // An empty path (an absolute-form target without one) means `/` (RFC 9112 §3.2.2).
    if !raw.is_empty() && is_normal(raw) {
        return Ok(false);
    }
    let bad = |why| Err(ProxyError::BadRequest(why));
    let mut decoded = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    raw.get(i + 1).and_then(|&b| hex(b)),
                    raw.get(i + 2).and_then(|&b| hex(b)),
                ) else {
                    return bad("malformed percent-escape in the path");
                };
                let c = h << 4 | l;
                if matches!(c, b'/' | b'\\' | 0) {
                    return bad("encoded slash, backslash or NUL in the path");
                }
                if unreserved(c) {
                    decoded.push(c);
                } else {
                    decoded.extend_from_slice(&[
                        b'%',
                        b"0123456789ABCDEF"[h as usize],
                        b"0123456789ABCDEF"[l as usize],
                    ]);
                }
                i += 3;
            }
            b'\\' => return bad("backslash in the path"),
            b => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in decoded.split(|&b| b == b'/').skip(1) {
        trailing_slash = false;
        match seg {
            b"" => trailing_slash = true,
            b"." => trailing_slash = true,
            b".." => {
                if segments.pop().is_none() {
                    return bad("path climbs above the root");
                }
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    out.clear();
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push(b'/');
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, ()> {
        let mut out = Vec::new();
        match normalize(p.as_bytes(), &mut out) {
            Ok(false) => Ok(p.to_string()),
            Ok(true) => Ok(String::from_utf8(out).unwrap()),
            Err(_) => Err(()),
        }
    }

    #[test]
    fn clean_paths_are_left_alone() {
        for p in [
            "/",
            "/api/v1/orders",
            "/a.b/c..d/.hidden",
            "/x/",
            "/a-b_c~d",
        ] {
            assert_eq!(norm(p), Ok(p.to_string()), "{p}");
        }
    }

    #[test]
    fn tricks_that_would_dodge_a_route_are_undone() {
        assert_eq!(norm("/x/../api/secret"), Ok("/api/secret".into()));
        assert_eq!(norm("//api//secret"), Ok("/api/secret".into()));
        assert_eq!(norm("/%61pi/secret"), Ok("/api/secret".into()));
        assert_eq!(norm("/api/./secret/."), Ok("/api/secret/".into()));
        assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
        assert_eq!(norm("/%2e%2e/x"), Err(()));
        assert_eq!(norm("/a/%2e%2e/api"), Ok("/api".into()));
        assert_eq!(norm("/api%2Fsecret"), Err(()));
        assert_eq!(norm("/api%5csecret"), Err(()));
        assert_eq!(norm("/api\\secret"), Err(()));
        assert_eq!(norm("/bad%zz"), Err(()));
        assert_eq!(norm("/bad%4"), Err(()));
        assert_eq!(norm("/../etc"), Err(()));
        assert_eq!(norm("/space%20here"), Ok("/space%20here".into()));
        assert_eq!(norm("/lower%c3%a9"), Ok("/lower%C3%A9".into()));
    }
}
