//! Durations written the humantime way (`90s`, `15m`, `12h`, `7d`), for configuration and
//! for a request's `duration`: one parser, so both read alike.

use std::time::Duration;

/// Parses `90s`, `15m`, `12h`, `7d`; the error quotes the input and shows the form.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 90s, 15m, 12h or 7d ({e})"))
}

/// Writes a duration in the largest whole unit (`7d`, `12h`, `15m`, `90s`), for messages
/// that quote a limit back to the person who broke it.
pub fn format_duration(d: Duration) -> String {
    match d.as_secs() {
        s if s != 0 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s != 0 && s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s != 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_the_humantime_way() {
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("soon").unwrap_err().contains("soon"));
    }

    #[test]
    fn limits_are_quoted_in_their_largest_unit() {
        assert_eq!(format_duration(Duration::from_secs(90 * 86_400)), "90d");
        assert_eq!(format_duration(Duration::from_secs(36 * 3_600)), "36h");
        assert_eq!(format_duration(Duration::from_secs(90)), "90s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
