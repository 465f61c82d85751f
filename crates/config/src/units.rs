//! Human-friendly durations ("30s", "1m30s", "500ms", plain seconds) and byte sizes
//! ("10MiB", "512KB", plain bytes), with serde adapters for the schema.
//!
//! Parsing and formatting use integer arithmetic only, so `parse(format(x)) == x` for
//! every value (a proptest below holds us to it).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::ser::Serializer;

/// Duration units, longest suffix first so "ms" is tried before "m" and "s".
const DURATION_UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

const KIB: u128 = 1 << 10;
const MIB: u128 = 1 << 20;
const GIB: u128 = 1 << 30;
const TIB: u128 = 1 << 40;

/// Byte-size units (lowercased). `KB`/`MB`/`GB`/`TB` are decimal (SI), the `i` forms binary.
const BYTE_UNITS: &[(&str, u128)] = &[
    ("b", 1),
    ("kb", 1_000),
    ("mb", 1_000_000),
    ("gb", 1_000_000_000),
    ("tb", 1_000_000_000_000),
    ("kib", KIB),
    ("mib", MIB),
    ("gib", GIB),
    ("tib", TIB),
];

/// Parse a duration: `"30s"`, `"500ms"`, `"5m"`, `"1h"`, `"1m30s"`, `"1.5s"`, or a
/// plain number of seconds (`"30"`, `"0.25"`). Units: `ns`, `us`, `ms`, `s`, `m`, `h`, `d`.
///
/// The error is a lowercase sentence naming what is wrong, without the key (the
/// caller knows the key).
pub fn parse_duration(input: &str) -> Result<Duration, String> {
    let text = input.trim();
    if text.is_empty() {
        return Err("invalid duration \"\": expected e.g. \"30s\", \"500ms\", \"1m30s\" or a number of seconds".into());
    }
    let bad = |why: &str| {
        format!(
            "invalid duration {input:?}: {why} (use a number with ns, us, ms, s, m, h or d, e.g. \"30s\", \"500ms\", \"1m30s\", or a plain number of seconds)"
        )
    };
    // A plain number is seconds.
    if let Some((mantissa, scale)) = parse_decimal(text) {
        return nanos_to_duration(
            mul_div(mantissa, 1_000_000_000, scale).ok_or_else(|| bad("too large"))?,
        )
        .ok_or_else(|| bad("too large"));
    }
    let mut rest = text;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let number_len =
            rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if number_len == 0 {
            return Err(bad("expected a number"));
        }
        let (number, after) = rest.split_at(number_len);
        let unit_len = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, after) = after.split_at(unit_len);
        let unit = unit.trim();
        if unit.is_empty() {
            return Err(bad("a number in a compound duration needs a unit"));
        }
        let Some(&(_, unit_nanos)) = DURATION_UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(bad(&format!("unknown unit {unit:?}")));
        };
        let (mantissa, scale) = parse_decimal(number).ok_or_else(|| bad("malformed number"))?;
        let nanos = mul_div(mantissa, unit_nanos, scale).ok_or_else(|| bad("too large"))?;
        total = total.checked_add(nanos).ok_or_else(|| bad("too large"))?;
        rest = after.trim_start();
    }
    nanos_to_duration(total).ok_or_else(|| bad("too large"))
}

/// Format a duration in the compact form [`parse_duration`] reads back exactly:
/// `"30s"`, `"1m30s"`, `"500ms"`, `"1h"`, `"0s"`.
pub fn format_duration(duration: Duration) -> String {
    let mut nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (name, size) in [
        ("d", 86_400_000_000_000u128),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ] {
        let count = nanos / size;
        if count > 0 {
            out.push_str(&count.to_string());
            out.push_str(name);
            nanos %= size;
        }
    }
    out
}

/// Parse a byte size: `"10MiB"`, `"512KB"`, `"1GB"`, `"1.5GiB"`, `"4096B"` or a plain
/// number of bytes. `KB`, `MB`, `GB`, `TB` are powers of 1000; `KiB`, `MiB`, `GiB`,
/// `TiB` powers of 1024. Units are case-insensitive.
pub fn parse_byte_size(input: &str) -> Result<u64, String> {
    let text = input.trim();
    let bad = |why: &str| {
        format!(
            "invalid byte size {input:?}: {why} (use a number with B, KB, MB, GB, KiB, MiB or GiB, e.g. \"10MiB\", or a plain number of bytes)"
        )
    };
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let multiplier = if unit.is_empty() {
        1
    } else {
        BYTE_UNITS
            .iter()
            .find(|(name, _)| *name == unit)
            .map(|&(_, size)| size)
            .ok_or_else(|| bad(&format!("unknown unit {unit:?}")))?
    };
    let (mantissa, scale) = parse_decimal(number).ok_or_else(|| bad("expected a number"))?;
    let scaled = mantissa.checked_mul(multiplier).ok_or_else(|| bad("too large"))?;
    let divisor = 10u128.checked_pow(scale).ok_or_else(|| bad("too many decimals"))?;
    if scaled % divisor != 0 {
        return Err(bad("not a whole number of bytes"));
    }
    u64::try_from(scaled / divisor).map_err(|_| bad("too large"))
}

/// Format a byte size in the largest unit that represents it exactly (binary units
/// first): `"10MiB"`, `"512KB"`, `"1000B"`. [`parse_byte_size`] reads it back exactly.
pub fn format_byte_size(bytes: u64) -> String {
    let value = u128::from(bytes);
    if value == 0 {
        return "0B".to_owned();
    }
    for (name, size) in [
        ("TiB", TIB),
        ("GiB", GIB),
        ("MiB", MIB),
        ("KiB", KIB),
        ("TB", 1_000_000_000_000),
        ("GB", 1_000_000_000),
        ("MB", 1_000_000),
        ("KB", 1_000),
    ] {
        if value % size == 0 {
            return format!("{}{name}", value / size);
        }
    }
    format!("{bytes}B")
}

/// `"12.345"` -> `(12345, 3)`; `None` unless it is digits with at most one dot.
fn parse_decimal(text: &str) -> Option<(u128, u32)> {
    let (int, frac) = match text.split_once('.') {
        Some((int, frac)) => (int, frac),
        None => (text, ""),
    };
    if (int.is_empty() && frac.is_empty())
        || !int.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 18
    {
        return None;
    }
    let digits = format!("{int}{frac}");
    let mantissa = digits.parse::<u128>().ok()?;
    Some((mantissa, u32::try_from(frac.len()).ok()?))
}

/// `mantissa * unit / 10^scale`, truncated (sub-nanosecond precision is dropped).
fn mul_div(mantissa: u128, unit: u128, scale: u32) -> Option<u128> {
    Some(mantissa.checked_mul(unit)? / 10u128.checked_pow(scale)?)
}

fn nanos_to_duration(nanos: u128) -> Option<Duration> {
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let sub = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, sub))
}

/// Serde adapter for `Duration` fields: accepts the string forms and plain numbers of
/// seconds (integer or float); writes the compact string form.
pub(crate) mod duration {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_duration(*value))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// The same for `Option<Duration>` (null or absent = `None`).
    pub(crate) mod option {
        use super::*;

        pub(crate) fn serialize<S: Serializer>(
            value: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match value {
                Some(value) => s.serialize_str(&format_duration(*value)),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            d.deserialize_option(OptionVisitor(DurationVisitor))
        }
    }

    pub(super) struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as \"30s\", \"500ms\", \"1m30s\" or a number of seconds")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            parse_duration(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            u64::try_from(v)
                .map(Duration::from_secs)
                .map_err(|_| E::custom(format!("invalid duration {v}: must not be negative")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            Duration::try_from_secs_f64(v).map_err(|_| {
                E::custom(format!(
                    "invalid duration {v}: must be a finite, non-negative number of seconds"
                ))
            })
        }
    }
}

/// Serde adapter for byte sizes stored as `u64`: accepts `"10MiB"`-style strings and
/// plain integers; writes the compact string form.
pub(crate) mod byte_size {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(value: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_byte_size(*value))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        d.deserialize_any(ByteSizeVisitor)
    }

    struct ByteSizeVisitor;

    impl Visitor<'_> for ByteSizeVisitor {
        type Value = u64;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a byte size such as \"10MiB\", \"512KB\" or a number of bytes")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<u64, E> {
            parse_byte_size(v).map_err(E::custom)
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<u64, E> {
            Ok(v)
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<u64, E> {
            u64::try_from(v)
                .map_err(|_| E::custom(format!("invalid byte size {v}: must not be negative")))
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<u64, E> {
            Err(E::custom(format!("invalid byte size {v}: must be a whole number of bytes")))
        }
    }
}

/// Serde adapter for listen addresses: `IP:PORT`, `[IPv6]:PORT`, or `localhost:PORT`
/// (read as `127.0.0.1:PORT`), with an error that shows the expected form.
pub(crate) mod socket_addr {
    use std::net::{Ipv4Addr, SocketAddr};

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(value: &SocketAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(value)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(serde::de::Error::custom)
    }

    pub(crate) fn parse(text: &str) -> Result<SocketAddr, String> {
        let text = text.trim();
        if let Some(port) = text.strip_prefix("localhost:")
            && let Ok(port) = port.parse::<u16>()
        {
            return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
        }
        text.parse().map_err(|_| {
            format!("invalid address {text:?}: expected IP:PORT, e.g. \"127.0.0.1:8080\", \"0.0.0.0:8080\" or \"[::1]:8080\"")
        })
    }
}

/// Wraps a visitor so `null` gives `None` and anything else `Some(inner)`.
pub(crate) struct OptionVisitor<V>(pub(crate) V);

impl<'de, V: Visitor<'de>> Visitor<'de> for OptionVisitor<V> {
    type Value = Option<V::Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self.0).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn duration_forms() {
        let cases: &[(&str, Duration)] = &[
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("5m", Duration::from_secs(300)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("1m 30s", Duration::from_secs(90)),
            ("1.5s", Duration::from_millis(1500)),
            ("30", Duration::from_secs(30)),
            ("0.25", Duration::from_millis(250)),
            ("2d", Duration::from_secs(172_800)),
            ("250us", Duration::from_micros(250)),
            ("0s", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(*expected), "{text}");
        }
    }

    #[test]
    fn duration_errors_say_what_is_wrong() {
        for (text, needle) in [
            ("5x", "unknown unit \"x\""),
            ("", "invalid duration"),
            ("s", "expected a number"),
            ("1m30", "needs a unit"),
            ("1..2s", "malformed number"),
            ("-5s", "expected a number"),
        ] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn listen_addresses() {
        assert_eq!(socket_addr::parse("0.0.0.0:80").unwrap().port(), 80);
        assert_eq!(socket_addr::parse("localhost:9000").unwrap().to_string(), "127.0.0.1:9000");
        assert_eq!(socket_addr::parse("[::1]:8080").unwrap().to_string(), "[::1]:8080");
        assert!(socket_addr::parse("127.0.0.1:70000").unwrap_err().contains("expected IP:PORT"));
        assert!(socket_addr::parse("8080").is_err());
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(500)), "500ms");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn byte_size_forms() {
        let cases: &[(&str, u64)] = &[
            ("10MiB", 10 * 1024 * 1024),
            ("512KB", 512_000),
            ("1GB", 1_000_000_000),
            ("64mib", 64 << 20),
            ("1.5KiB", 1536),
            ("4096", 4096),
            ("4096B", 4096),
            ("1 GiB", 1 << 30),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_byte_size(text), Ok(*expected), "{text}");
        }
        assert!(parse_byte_size("10XB").unwrap_err().contains("unknown unit \"xb\""));
        assert!(parse_byte_size("0.5B").unwrap_err().contains("not a whole number"));
        assert!(parse_byte_size("MiB").unwrap_err().contains("expected a number"));
        assert!(parse_byte_size("99999999TiB").unwrap_err().contains("too large"));
    }

    #[test]
    fn byte_sizes_format_compactly() {
        assert_eq!(format_byte_size(10 << 20), "10MiB");
        assert_eq!(format_byte_size(512_000), "500KiB");
        assert_eq!(format_byte_size(1_500_000), "1500KB");
        assert_eq!(format_byte_size(1001), "1001B");
        assert_eq!(format_byte_size(0), "0B");
    }

    proptest! {
        #[test]
        fn duration_round_trips(secs in 0u64..10_000_000_000, nanos in 0u32..1_000_000_000) {
            let d = Duration::new(secs, nanos);
            prop_assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }

        #[test]
        fn byte_size_round_trips(bytes in any::<u64>()) {
            prop_assert_eq!(parse_byte_size(&format_byte_size(bytes)), Ok(bytes));
        }

        #[test]
        fn scaled_byte_sizes_round_trip(n in 0u64..1_000_000, unit in 0usize..5) {
            let bytes = n << (unit * 10);
            prop_assert_eq!(parse_byte_size(&format_byte_size(bytes)), Ok(bytes));
        }

        #[test]
        fn parsers_never_panic(s in "\\PC{0,16}") {
            let _ = parse_duration(&s);
            let _ = parse_byte_size(&s);
        }
    }
}
