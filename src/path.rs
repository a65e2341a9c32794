//! Request path normalization, shared by route matching and forwarding.
//!
//! Policy (also in docs/configuration.md, "Path normalization"):
//! - Percent-encoded unreserved characters (`A-Z a-z 0-9 - . _ ~`) are decoded, so `%2e` is `.`.
//!   Other escapes are kept, with their hex digits uppercased.
//! - Dot segments are removed as in RFC 3986 section 5.2.4, and runs of `/` are merged.
//! - `%2F` and `%5C` stay encoded and do not split segments. A segment that would hold a `.` or
//!   `..` segment once they were decoded (`..%2F`) is rejected, because a backend that decodes
//!   them could otherwise resolve the path outside the prefix that was matched. A raw `\` is
//!   treated the same way, for backends that read it as a separator, and so is a `.` or `..`
//!   before a `;` path parameter (`..;x`), which Tomcat and Spring resolve.
//! - An encoded NUL (`%00`) or a malformed escape is rejected.
//! - The query string is never changed.
//!
//! The gateway forwards the normalized path, so the upstream receives exactly the path that
//! was routed. A path that is already normal is forwarded byte for byte.

use std::borrow::Cow;

/// Reason a request path cannot be normalized. The gateway responds 400 in each case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    EncodedNul,
    /// A dot segment hidden behind an encoded slash or a backslash.
    HiddenDotSegment,
}

impl std::fmt::Display for PathError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "the path does not start with \"/\"",
            PathError::BadEscape => "a \"%\" is not followed by two hex digits",
            PathError::EncodedNul => "the path contains %00",
            PathError::HiddenDotSegment => {
                "a dot segment is hidden behind %2F, %5C, a backslash or a \";\" parameter"
            }
        })
    }
}

/// Splits a request target into its path and the query part that follows it, with the `?`.
/// `/x?` gives (`/x`, `?`); `/x` gives (`/x`, ``).
pub fn split_query(target: &[u8]) -> (&[u8], &[u8]) {
    match target.iter().position(|&b| b == b'?') {
        Some(at) => target.split_at(at),
        None => (target, &[]),
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

fn is_unreserved(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~')
}

/// Returns true when the path needs no work: no escapes, no backslash, no empty or dot segment.
fn is_plain(path: &[u8]) -> bool {
    let mut previous = 0u8;
    for (i, &byte) in path.iter().enumerate() {
        match byte {
            b'%' | b'\\' | b';' => return false,
            b'/' if previous == b'/' => return false,
            b'.' if previous == b'/' => {
                // "/." starts a dot segment when followed by "/", ".", or the end.
                match path.get(i + 1) {
                    None | Some(b'/') => return false,
                    Some(b'.') if matches!(path.get(i + 2), None | Some(b'/')) => return false,
                    _ => {}
                }
            }
            _ => {}
        }
        previous = byte;
    }
    true
}

/// Decodes unreserved escapes of one segment and uppercases the hex digits of the rest.
fn decode_segment(segment: &[u8], out: &mut Vec<u8>) -> Result<(), PathError> {
    let mut i = 0;
    while i < segment.len() {
        let byte = segment[i];
        if byte != b'%' {
            out.push(byte);
            i += 1;
            continue;
        }
        let (Some(high), Some(low)) = (
            segment.get(i + 1).copied().and_then(hex_value),
            segment.get(i + 2).copied().and_then(hex_value),
        ) else {
            return Err(PathError::BadEscape);
        };
        let decoded = high << 4 | low;
        if decoded == 0 {
            return Err(PathError::EncodedNul);
        }
        if is_unreserved(decoded) {
            out.push(decoded);
        } else {
            out.push(b'%');
            out.push(segment[i + 1].to_ascii_uppercase());
            out.push(segment[i + 2].to_ascii_uppercase());
        }
        i += 3;
    }
    Ok(())
}

/// Rejects a decoded segment such as `..%2Fadmin`, `..\admin` or `..;x`, whose parts would
/// become dot segments if a backend decoded `%2F` or `%5C`, split on `\`, or dropped a `;`
/// path parameter (as Tomcat and Spring do).
fn check_hidden_dot_segments(segment: &[u8]) -> Result<(), PathError> {
    if let Some(semicolon) = segment.iter().position(|&b| b == b';') {
        let before = &segment[..semicolon];
        if before == b"." || before == b".." {
            return Err(PathError::HiddenDotSegment);
        }
    }
    let has_separator =
        segment.contains(&b'\\') || segment.windows(3).any(|w| w == b"%2F" || w == b"%5C");
    if !has_separator {
        return Ok(());
    }
    let mut part_start = 0;
    let mut i = 0;
    while i <= segment.len() {
        let separator_len = if i == segment.len() || segment[i] == b'\\' {
            1
        } else if segment[i..].starts_with(b"%2F") || segment[i..].starts_with(b"%5C") {
            3
        } else {
            i += 1;
            continue;
        };
        let part = &segment[part_start..i];
        if part == b"." || part == b".." {
            return Err(PathError::HiddenDotSegment);
        }
        i += separator_len;
        part_start = i;
    }
    Ok(())
}

/// Normalizes a request path (without its query) as described in the module documentation.
pub fn normalize(path: &[u8]) -> Result<Cow<'_, [u8]>, PathError> {
    if path.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(path) {
        return Ok(Cow::Borrowed(path));
    }

    // Output segments as byte ranges of `decoded`; `..` pops the last one.
    let mut decoded = Vec::with_capacity(path.len());
    let mut segments: Vec<(usize, usize)> = Vec::new();
    let mut trailing_slash = false;
    let raw_segments: Vec<&[u8]> = path[1..].split(|&b| b == b'/').collect();
    let last = raw_segments.len() - 1;
    for (index, raw) in raw_segments.into_iter().enumerate() {
        let start = decoded.len();
        decode_segment(raw, &mut decoded)?;
        let segment = &decoded[start..];
        check_hidden_dot_segments(segment)?;
        let is_last = index == last;
        match segment {
            b"" => {
                // An empty segment comes from "//" (merged away) or from a trailing "/".
                decoded.truncate(start);
                trailing_slash = is_last;
            }
            b"." => {
                decoded.truncate(start);
                trailing_slash = is_last;
            }
            b".." => {
                decoded.truncate(start);
                segments.pop();
                trailing_slash = is_last;
            }
            _ => {
                segments.push((start, decoded.len()));
                trailing_slash = false;
            }
        }
    }

    let mut normalized = Vec::with_capacity(path.len());
    for &(start, end) in &segments {
        normalized.push(b'/');
        normalized.extend_from_slice(&decoded[start..end]);
    }
    if trailing_slash || normalized.is_empty() {
        normalized.push(b'/');
    }
    if normalized == path {
        Ok(Cow::Borrowed(path))
    } else {
        Ok(Cow::Owned(normalized))
    }
}

/// Returns true when `path` equals `prefix` or continues it with a new segment. `prefix` has no
/// trailing `/`, except the root prefix `/`, which matches every path.
pub fn has_segment_prefix(path: &[u8], prefix: &[u8]) -> bool {
    if prefix == b"/" {
        return true;
    }
    path.starts_with(prefix) && (path.len() == prefix.len() || path[prefix.len()] == b'/')
}

/// Removes a segment prefix: `/api/users` less `/api` is `/users`, and `/api` less `/api` is `/`.
/// Returns None when `path` is not under `prefix`.
pub fn strip_segment_prefix<'a>(path: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    if prefix == b"/" {
        return Some(path);
    }
    if !has_segment_prefix(path, prefix) {
        return None;
    }
    let rest = &path[prefix.len()..];
    Some(if rest.is_empty() { b"/" } else { rest })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(path: &str) -> Result<String, PathError> {
        normalize(path.as_bytes()).map(|p| String::from_utf8(p.into_owned()).unwrap())
    }

    #[test]
    fn plain_paths_are_borrowed() {
        assert!(matches!(normalize(b"/api/users/7"), Ok(Cow::Borrowed(_))));
        assert!(matches!(normalize(b"/"), Ok(Cow::Borrowed(_))));
        assert!(matches!(
            normalize(b"/a/.hidden/x..y"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(normalize(b"/a/b/"), Ok(Cow::Borrowed(_))));
    }

    #[test]
    fn dot_segments_are_removed() {
        assert_eq!(norm("/public/../admin"), Ok("/admin".into()));
        assert_eq!(norm("/public/%2e%2e/admin"), Ok("/admin".into()));
        assert_eq!(norm("/public/%2E%2e/admin"), Ok("/admin".into()));
        assert_eq!(norm("/a/./b/."), Ok("/a/b/".into()));
        assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
        assert_eq!(norm("/../../x"), Ok("/x".into()));
        assert_eq!(norm("/.."), Ok("/".into()));
    }

    #[test]
    fn slashes_are_merged() {
        assert_eq!(norm("//public//x"), Ok("/public/x".into()));
        assert_eq!(norm("/a//"), Ok("/a/".into()));
        assert_eq!(norm("//"), Ok("/".into()));
    }

    #[test]
    fn escapes() {
        assert_eq!(norm("/api/f/a%2Fb"), Ok("/api/f/a%2Fb".into()));
        assert_eq!(norm("/api/f/a%2fb"), Ok("/api/f/a%2Fb".into()));
        assert_eq!(norm("/%7Euser/%41"), Ok("/~user/A".into()));
        assert_eq!(norm("/a%20b"), Ok("/a%20b".into()));
        assert_eq!(norm("/a%2"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%00"), Err(PathError::EncodedNul));
    }

    #[test]
    fn hidden_dot_segments_are_rejected() {
        assert_eq!(norm("/public/..%2Fadmin"), Err(PathError::HiddenDotSegment));
        assert_eq!(
            norm("/public/%2e%2e%2fadmin"),
            Err(PathError::HiddenDotSegment)
        );
        assert_eq!(norm("/public/..%5Cadmin"), Err(PathError::HiddenDotSegment));
        assert_eq!(norm("/public/..\\admin"), Err(PathError::HiddenDotSegment));
        assert_eq!(norm("/public/a%2F.."), Err(PathError::HiddenDotSegment));
        assert_eq!(norm("/public/a..%2Fb"), Ok("/public/a..%2Fb".into()));
        assert_eq!(norm("/public/..;/admin"), Err(PathError::HiddenDotSegment));
        assert_eq!(
            norm("/public/%2e%2e;x/admin"),
            Err(PathError::HiddenDotSegment)
        );
        assert_eq!(norm("/public/.;/admin"), Err(PathError::HiddenDotSegment));
        assert_eq!(norm("/public/a;b=1/x"), Ok("/public/a;b=1/x".into()));
    }

    #[test]
    fn not_absolute() {
        assert_eq!(norm("api"), Err(PathError::NotAbsolute));
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
    }

    #[test]
    fn segment_prefixes() {
        assert!(has_segment_prefix(b"/api", b"/api"));
        assert!(has_segment_prefix(b"/api/", b"/api"));
        assert!(has_segment_prefix(b"/api/x", b"/api"));
        assert!(!has_segment_prefix(b"/apiv2", b"/api"));
        assert!(has_segment_prefix(b"/anything", b"/"));
        assert_eq!(strip_segment_prefix(b"/api", b"/api"), Some(&b"/"[..]));
        assert_eq!(strip_segment_prefix(b"/api/x", b"/api"), Some(&b"/x"[..]));
        assert_eq!(strip_segment_prefix(b"/apix", b"/api"), None);
    }

    #[test]
    fn split_query_keeps_question_mark() {
        assert_eq!(split_query(b"/x?"), (&b"/x"[..], &b"?"[..]));
        assert_eq!(split_query(b"/x?a=1?b"), (&b"/x"[..], &b"?a=1?b"[..]));
        assert_eq!(split_query(b"/x"), (&b"/x"[..], &b""[..]));
    }
}
