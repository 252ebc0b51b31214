//! Byte sizes as people write them in flags (`1MiB`, `256KiB`, `10KB`) and as they read them
//! back in progress lines and summaries.

/// Parses a size for clap's `value_parser`. Binary suffixes (`KiB`, `MiB`, `GiB`, and the
/// bare `K`, `M`, `G` that `ls -h` and etcd's docs use) multiply by 1024; `KB`, `MB`, `GB`
/// by 1000. Zero is refused: every size flag here is a budget or a value size.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (digits, suffix) = trimmed.split_at(split);
    let bad = || format!("`{text}` is not a size like 4096, 256KiB, 1MiB or 2GiB");
    let number: u64 = digits.parse().map_err(|_| bad())?;
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(bad()),
    };
    let bytes = number
        .checked_mul(unit)
        .ok_or_else(|| format!("`{text}` is too large"))?;
    if bytes == 0 {
        return Err(format!("`{text}` is zero; give a positive size"));
    }
    Ok(bytes)
}

/// `1.5 MiB`-style text for people; summaries also carry the exact byte count.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_and_decimal_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("256KiB"), Ok(256 * 1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1m"), Ok(1 << 20));
        assert_eq!(parse_size("2 GiB"), Ok(2 << 30));
        assert_eq!(parse_size("10KB"), Ok(10_000));
    }

    #[test]
    fn refuses_garbage_zero_and_overflow() {
        assert!(parse_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_size("1XB").unwrap_err().contains("not a size"));
        assert!(parse_size("-1").is_err());
        assert!(parse_size("0MiB").unwrap_err().contains("zero"));
        assert!(
            parse_size("99999999999999GiB")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn human_text_picks_a_readable_unit() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 << 30), "3.0 GiB");
    }
}
