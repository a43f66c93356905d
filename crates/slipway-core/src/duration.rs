//! Human durations as GitLab accepts them (`timeout: 1h 30m`, `start_in: 30 minutes`,
//! `expire_in: 2 weeks`): GitLab parses them with ChronicDuration; this accepts the same
//! everyday forms.

/// Seconds in the given duration text, or `None` when it is not a duration. A bare number
/// is seconds.
pub fn parse_seconds(text: &str) -> Option<u64> {
    let text = text.trim().to_ascii_lowercase();
    if text.is_empty() {
        return None;
    }
    if let Ok(n) = text.parse::<u64>() {
        return Some(n);
    }
    // `hh:mm:ss` / `mm:ss`
    if text.contains(':') {
        let mut total: u64 = 0;
        let parts: Vec<&str> = text.split(':').collect();
        if parts.len() > 3 {
            return None;
        }
        for p in parts {
            let n: u64 = p.parse().ok()?;
            total = total.checked_mul(60)?.checked_add(n)?;
        }
        return Some(total);
    }
    let mut total: u64 = 0;
    let mut rest = text.as_str();
    let mut any = false;
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c.is_whitespace() || c == ',');
        rest = rest.strip_prefix("and ").unwrap_or(rest);
        if rest.is_empty() {
            break;
        }
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_end == 0 {
            return None;
        }
        let number: f64 = rest[..num_end].parse().ok()?;
        rest = rest[num_end..].trim_start();
        let unit_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        rest = &rest[unit_end..];
        let factor: f64 = match unit {
            "" | "s" | "sec" | "secs" | "second" | "seconds" => 1.0,
            "m" | "min" | "mins" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3600.0,
            "d" | "day" | "days" => 86_400.0,
            "w" | "wk" | "wks" | "week" | "weeks" => 604_800.0,
            "mo" | "mos" | "month" | "months" => 2_592_000.0,
            "y" | "yr" | "yrs" | "year" | "years" => 31_536_000.0,
            _ => return None,
        };
        let secs = number * factor;
        if !secs.is_finite() || secs > u64::MAX as f64 / 2.0 {
            return None;
        }
        total = total.checked_add(secs as u64)?;
        any = true;
    }
    any.then_some(total)
}

#[cfg(test)]
mod tests {
    use super::parse_seconds;

    #[test]
    fn everyday_forms() {
        assert_eq!(parse_seconds("3600"), Some(3600));
        assert_eq!(parse_seconds("1h 30m"), Some(5400));
        assert_eq!(parse_seconds("3 hours 30 minutes"), Some(12600));
        assert_eq!(parse_seconds("30 minutes"), Some(1800));
        assert_eq!(parse_seconds("1 day"), Some(86400));
        assert_eq!(parse_seconds("2 weeks"), Some(1_209_600));
        assert_eq!(parse_seconds("1 week and 2 days"), Some(777_600));
        assert_eq!(parse_seconds("01:30:00"), Some(5400));
        assert_eq!(parse_seconds("10 seconds"), Some(10));
        assert_eq!(parse_seconds("1.5 hours"), Some(5400));
    }

    #[test]
    fn rejects_nonsense() {
        assert_eq!(parse_seconds(""), None);
        assert_eq!(parse_seconds("soon"), None);
        assert_eq!(parse_seconds("5 fortnights"), None);
        assert_eq!(parse_seconds("1:2:3:4"), None);
        assert_eq!(parse_seconds("99999999999999999999 years"), None);
    }
}
