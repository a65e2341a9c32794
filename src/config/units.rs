//! Value types of the config file that need their own parsing: durations, sizes and socket
//! addresses. Each rejects a bad value while the file is deserialized, so serde_yaml attaches the
//! key path and line to the error.

use serde::de::{self, Deserialize, Deserializer};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

/// A duration written as an integer with a unit: `250ms`, `2s`, `1m`, `1h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationValue(pub Duration);

/// A size in bytes written as an integer with a unit: `512B`, `64KiB`, `10MiB`, `1GiB`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeValue(pub u64);

/// A `host:port` socket address. Host names are resolved once, at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressValue {
    pub text: String,
    pub addr: SocketAddr,
}

/// Formats a duration the way the config file writes it: whole seconds as `2s`, anything
/// else as `250ms`.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_millis() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Parses `250ms`, `2s`, `1m` or `1h` into a [`Duration`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let hint = "expected an integer with a unit (ms, s, m, h), e.g. \"250ms\" or \"2s\"";
    if number.is_empty() {
        return Err(format!("invalid duration \"{text}\": {hint}"));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid duration \"{text}\": the number is too large"))?;
    let millis_per_unit = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "" => return Err(format!("invalid duration \"{text}\": missing unit; {hint}")),
        _ => return Err(format!("invalid duration \"{text}\": unknown unit; {hint}")),
    };
    value
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("invalid duration \"{text}\": the number is too large"))
}

/// Parses `512B`, `64KiB`, `10MiB` or `1GiB` into a byte count.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let digits_end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits_end);
    let hint = "expected an integer with a unit (B, KiB, MiB, GiB), e.g. \"64KiB\"";
    if number.is_empty() {
        return Err(format!("invalid size \"{text}\": {hint}"));
    }
    let value: u64 = number
        .parse()
        .map_err(|_| format!("invalid size \"{text}\": the number is too large"))?;
    let multiplier: u64 = match unit {
        "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "" => return Err(format!("invalid size \"{text}\": missing unit; {hint}")),
        _ => return Err(format!("invalid size \"{text}\": unknown unit; {hint}")),
    };
    value
        .checked_mul(multiplier)
        .ok_or_else(|| format!("invalid size \"{text}\": the number is too large"))
}

/// Parses `host:port` (`[v6]:port` for IPv6). A host name is resolved with the system resolver
/// and the first address is used.
pub fn parse_address(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!(
            "invalid address \"{text}\": expected host:port, e.g. \"127.0.0.1:8080\""
        ));
    };
    if host.is_empty() {
        return Err(format!("invalid address \"{text}\": missing host"));
    }
    if port.parse::<u16>().is_err() {
        return Err(format!(
            "invalid address \"{text}\": port \"{port}\" is not a number from 0 to 65535"
        ));
    }
    // NOTE: resolution happens once at load; a name whose addresses change later needs a reload.
    match (host, port.parse::<u16>().unwrap_or(0)).to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("invalid address \"{text}\": host \"{host}\" has no address")),
        Err(e) => Err(format!(
            "invalid address \"{text}\": cannot resolve host \"{host}\": {e}"
        )),
    }
}

struct StrVisitor(&'static str);

impl de::Visitor<'_> for StrVisitor {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(self.0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    // A bare YAML number (`connect: 5`) arrives as an integer; turn it into text so the error
    // names the missing unit instead of "invalid type".
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for DurationValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_any(StrVisitor("a duration such as \"2s\""))?;
        parse_duration(&text)
            .map(DurationValue)
            .map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for SizeValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = deserializer.deserialize_any(StrVisitor("a size such as \"64KiB\""))?;
        parse_size(&text).map(SizeValue).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for AddressValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text =
            deserializer.deserialize_any(StrVisitor("an address such as \"127.0.0.1:8080\""))?;
        let addr = parse_address(&text).map_err(de::Error::custom)?;
        Ok(AddressValue { text, addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duration_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn duration_rejects_missing_or_unknown_unit() {
        assert!(parse_duration("5").unwrap_err().contains("missing unit"));
        assert!(parse_duration("2 seconds")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn size_units() {
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert!(parse_size("10MB").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn address_forms() {
        assert_eq!(
            parse_address("127.0.0.1:80").unwrap(),
            "127.0.0.1:80".parse().unwrap()
        );
        assert_eq!(
            parse_address("[::1]:80").unwrap(),
            "[::1]:80".parse().unwrap()
        );
        assert!(parse_address("127.0.0.1")
            .unwrap_err()
            .contains("host:port"));
        assert!(parse_address("localhost:99999")
            .unwrap_err()
            .contains("port"));
    }
}
