//! Durations as people write them in flags and environment variables: `60s`, `10m`, `1h30m`.

use std::time::Duration;

/// Parses a human duration for clap's `value_parser`; zero is refused because every
/// duration flag here is an interval or a timeout, where zero would spin or never wait.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let parsed = humantime::parse_duration(text.trim())
        .map_err(|err| format!("`{text}` is not a duration like 30s, 10m or 1h ({err})"))?;
    if parsed.is_zero() {
        return Err(format!("`{text}` is zero; give a positive duration"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_operators_write() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn refuses_zero_and_garbage_with_a_message() {
        assert!(parse_duration("0s").unwrap_err().contains("zero"));
        assert!(
            parse_duration("soon")
                .unwrap_err()
                .contains("not a duration")
        );
        assert!(parse_duration("60").is_err(), "a bare number has no unit");
    }
}
