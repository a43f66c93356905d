//! Pipeline schedules: GitLab's cron syntax in a time zone, and the next time it fires.
//!
//! GitLab parses schedules with the `fugit` Ruby gem; this follows it:
//!
//! - five fields: minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
//!   `jan`-`dec`), day of week (0-7 or `sun`-`sat`, 0 and 7 both Sunday);
//! - each field a comma-separated list of `*`, `N`, `A-B`, `*/S`, `A-B/S` or `A/S`;
//! - `@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`;
//! - `L` in the day of month for the last day of the month;
//! - `DOW#N` for the Nth such weekday of the month (`1#2`: second Monday; `fri#-1`: last
//!   Friday) and `DOW%M` / `DOW%M+K` for every Mth week (`sun%2`: every other Sunday,
//!   counting weeks from 2019-01-01 as fugit does);
//! - when both the day of month and the day of week are restricted, a day matching either
//!   fires (classic cron); `*` leaves a field unrestricted.
//!
//! Times are matched on the wall clock of the schedule's time zone (`UTC`, a fixed offset
//! such as `+05:30` or `UTC-3`, or an IANA name such as `Europe/Berlin`, from the system's
//! zoneinfo or Slipway's bundled copy). Like fugit, a wall-clock time that a daylight
//! saving change skips does not fire that day, and one it repeats fires at both instants.

use jiff::civil::{Date, DateTime};
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Timestamp};
use std::fmt;

/// A parsed schedule: cron expression and time zone.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    expression: String,
    zone_name: String,
    zone: TimeZone,
    minutes: u64,
    hours: u32,
    days: u32,
    last_day: bool,
    months: u16,
    weekdays: Vec<WeekdaySpec>,
    days_restricted: bool,
    weekdays_restricted: bool,
}

/// One day-of-week entry: a weekday (0 = Sunday), optionally the Nth of the month or
/// every Mth week.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WeekdaySpec {
    day: u8,
    nth: Option<i8>,
    modulo: Option<(u32, u32)>,
}

/// Why a schedule was refused. The message names the field and the offending text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CronError {}

const SHORTHANDS: &[(&str, &str)] = &[
    ("@yearly", "0 0 1 1 *"),
    ("@annually", "0 0 1 1 *"),
    ("@monthly", "0 0 1 * *"),
    ("@weekly", "0 0 * * 0"),
    ("@daily", "0 0 * * *"),
    ("@midnight", "0 0 * * *"),
    ("@hourly", "0 * * * *"),
];

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// How far ahead [`CronSchedule::next_after`] looks; every valid expression fires well
/// within it (the rarest, 29 February on a given weekday, within 28 years).
const HORIZON_YEARS: i64 = 30;

struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The first name's value (`jan` is 1, `sun` is 0).
    names_from: u32,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    names_from: 0,
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    names_from: 0,
};
const DAY: Field = Field {
    name: "day of month",
    min: 1,
    max: 31,
    names: &[],
    names_from: 1,
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &MONTHS,
    names_from: 1,
};
const WEEKDAY: Field = Field {
    name: "day of week",
    min: 0,
    max: 7,
    names: &WEEKDAYS,
    names_from: 0,
};

impl Field {
    fn value(&self, s: &str) -> Result<u32, CronError> {
        let lower = s.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.names_from);
        }
        let v: u32 = s
            .parse()
            .map_err(|_| CronError(format!("{}: {s:?} is not a number or a name", self.name)))?;
        if v < self.min || v > self.max {
            return Err(CronError(format!(
                "{}: {v} is outside {}-{}",
                self.name, self.min, self.max
            )));
        }
        Ok(v)
    }

    /// The values of one list item (`*`, `N`, `A-B`, with an optional `/S`).
    fn item(&self, item: &str) -> Result<Vec<u32>, CronError> {
        let (range, step) = match item.split_once('/') {
            Some((r, s)) => {
                let step: u32 = s
                    .parse()
                    .map_err(|_| CronError(format!("{}: step {s:?} is not a number", self.name)))?;
                if step == 0 {
                    return Err(CronError(format!("{}: a step of 0 never fires", self.name)));
                }
                (r, Some(step))
            }
            None => (item, None),
        };
        let (lo, hi) = if range == "*" {
            (
                self.min,
                if self.name == "day of week" {
                    6
                } else {
                    self.max
                },
            )
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (self.value(a)?, self.value(b)?);
            if a > b {
                return Err(CronError(format!(
                    "{}: the range {range} runs backwards",
                    self.name
                )));
            }
            (a, b)
        } else {
            let a = self.value(range)?;
            // `A/S` is "from A to the end, every S" as in fugit and Vixie cron.
            (a, if step.is_some() { self.max } else { a })
        };
        Ok((lo..=hi).step_by(step.unwrap_or(1) as usize).collect())
    }

    fn bits(&self, text: &str) -> Result<u64, CronError> {
        let mut bits = 0u64;
        for item in text.split(',') {
            if item.is_empty() {
                return Err(CronError(format!(
                    "{}: empty list item in {text:?}",
                    self.name
                )));
            }
            for v in self.item(item)? {
                bits |= 1 << v;
            }
        }
        Ok(bits)
    }
}

/// Parses a `cron_timezone`: `UTC` (also empty, `Etc/UTC`, `Z`), a fixed offset (`+02:00`,
/// `-0530`, `UTC+2`, `GMT-03:30`) or an IANA name.
pub fn parse_time_zone(name: &str) -> Result<TimeZone, CronError> {
    let n = name.trim();
    if n.is_empty() || n.eq_ignore_ascii_case("utc") || n == "Z" || n == "Etc/UTC" {
        return Ok(TimeZone::UTC);
    }
    let offset_text = n
        .strip_prefix("UTC")
        .or_else(|| n.strip_prefix("GMT"))
        .filter(|r| r.starts_with(['+', '-']))
        .or_else(|| n.starts_with(['+', '-']).then_some(n));
    if let Some(o) = offset_text {
        return parse_offset(o)
            .map(TimeZone::fixed)
            .ok_or_else(|| CronError(format!("{name}: not a UTC offset (expected like +05:30)")));
    }
    TimeZone::get(n).map_err(|_| CronError(format!("{name}: unknown time zone")))
}

fn parse_offset(s: &str) -> Option<Offset> {
    let (sign, rest) = match s.as_bytes().first()? {
        b'+' => (1, &s[1..]),
        b'-' => (-1, &s[1..]),
        _ => return None,
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => (&rest[..2], &rest[2..]),
        None => (rest, "0"),
    };
    if h.is_empty()
        || h.len() > 2
        || m.len() > 2
        || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let (h, m): (i32, i32) = (h.parse().ok()?, m.parse().ok()?);
    if h > 18 || m > 59 {
        return None;
    }
    Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

impl CronSchedule {
    /// Parses `expression` in the time zone `zone` (see [`parse_time_zone`]).
    pub fn parse(expression: &str, zone: &str) -> Result<CronSchedule, CronError> {
        let tz = parse_time_zone(zone)?;
        let trimmed = expression.trim();
        let expanded = if trimmed.starts_with('@') {
            let lower = trimmed.to_ascii_lowercase();
            SHORTHANDS
                .iter()
                .find(|(k, _)| *k == lower)
                .map(|(_, v)| *v)
                .ok_or_else(|| CronError(format!("{trimmed}: unknown shorthand")))?
        } else {
            trimmed
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(CronError(format!(
                "{trimmed:?}: expected 5 fields (minute hour day-of-month month day-of-week), \
                 found {}",
                fields.len()
            )));
        }
        let minutes = MINUTE.bits(fields[0])?;
        let hours = HOUR.bits(fields[1])? as u32;
        let (days, last_day) = parse_days(fields[2])?;
        let months = MONTH.bits(fields[3])? as u16;
        let weekdays = parse_weekdays(fields[4])?;
        let s = CronSchedule {
            expression: trimmed.to_string(),
            zone_name: if zone.trim().is_empty() {
                "UTC".into()
            } else {
                zone.trim().to_string()
            },
            zone: tz,
            minutes,
            hours,
            days,
            last_day,
            months,
            weekdays,
            days_restricted: fields[2] != "*" && fields[2] != "?",
            weekdays_restricted: fields[4] != "*" && fields[4] != "?",
        };
        if s.days_restricted && !s.weekdays_restricted && !s.some_month_has_a_day() {
            return Err(CronError(format!(
                "{trimmed:?}: never fires (no month has such a day)"
            )));
        }
        Ok(s)
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn time_zone_name(&self) -> &str {
        &self.zone_name
    }

    fn some_month_has_a_day(&self) -> bool {
        if self.last_day {
            return true;
        }
        (1..=12u32)
            .filter(|m| self.months & (1 << m) != 0)
            .any(|m| {
                let max = match m {
                    2 => 29,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                };
                (1..=max).any(|d| self.days & (1 << d) != 0)
            })
    }

    fn day_matches(&self, date: Date) -> bool {
        let day = date.day() as u32;
        let dom =
            self.days & (1 << day) != 0 || (self.last_day && date.day() == date.days_in_month());
        let dow = self.weekdays.iter().any(|w| w.matches(date));
        match (self.days_restricted, self.weekdays_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        }
    }

    /// The first time strictly after `after` at which the schedule fires, `None` if it
    /// never does within 30 years.
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        let start = after.as_second().div_euclid(60) * 60 + 60;
        let mut t = Timestamp::from_second(start).ok()?;
        let end = after
            .checked_add(SignedDuration::from_hours(24 * 366 * HORIZON_YEARS))
            .ok()?;
        while t < end {
            let dt = t.to_zoned(self.zone.clone()).datetime();
            if self.months & (1 << dt.month()) == 0 {
                t = self.local_start(next_month(dt.date())?, t)?;
                continue;
            }
            if !self.day_matches(dt.date()) {
                t = self.local_start(dt.date().tomorrow().ok()?, t)?;
                continue;
            }
            let (hour, minute) = (dt.hour() as u32, dt.minute() as u32);
            if self.hours & (1 << hour) == 0 {
                t = add_minutes(t, 60 - minute)?;
                continue;
            }
            if self.minutes & (1 << minute) == 0 {
                let next = (minute + 1..60).find(|m| self.minutes & (1 << m) != 0);
                t = add_minutes(t, next.unwrap_or(60) - minute)?;
                continue;
            }
            return Some(t);
        }
        None
    }

    /// The next `n` firing times after `after`.
    pub fn upcoming(&self, after: Timestamp, n: usize) -> Vec<Timestamp> {
        let mut out = Vec::with_capacity(n);
        let mut t = after;
        while out.len() < n {
            match self.next_after(t) {
                Some(next) => {
                    out.push(next);
                    t = next;
                }
                None => break,
            }
        }
        out
    }

    /// The instant local midnight of `date` starts, moved past `current` so the search
    /// always advances.
    fn local_start(&self, date: Date, current: Timestamp) -> Option<Timestamp> {
        let midnight = DateTime::from(date)
            .to_zoned(self.zone.clone())
            .ok()?
            .timestamp();
        if midnight > current {
            Some(midnight)
        } else {
            add_minutes(current, 1)
        }
    }
}

fn add_minutes(t: Timestamp, m: u32) -> Option<Timestamp> {
    t.checked_add(SignedDuration::from_mins(i64::from(m.max(1))))
        .ok()
}

fn next_month(d: Date) -> Option<Date> {
    let (y, m) = if d.month() == 12 {
        (d.year().checked_add(1)?, 1)
    } else {
        (d.year(), d.month() + 1)
    };
    Date::new(y, m, 1).ok()
}

impl fmt::Display for CronSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.expression, self.zone_name)
    }
}

fn parse_days(text: &str) -> Result<(u32, bool), CronError> {
    let mut last = false;
    let mut rest = Vec::new();
    for item in text.split(',') {
        if item.eq_ignore_ascii_case("l") {
            last = true;
        } else {
            rest.push(item);
        }
    }
    let days = if rest.is_empty() {
        0
    } else {
        DAY.bits(&rest.join(","))? as u32
    };
    Ok((days, last))
}

fn parse_weekdays(text: &str) -> Result<Vec<WeekdaySpec>, CronError> {
    let mut out = Vec::new();
    for item in text.split(',') {
        if item.is_empty() {
            return Err(CronError(format!(
                "day of week: empty list item in {text:?}"
            )));
        }
        if let Some((day, nth)) = item.split_once('#') {
            let d = WEEKDAY.value(day)? % 7;
            let n: i8 = if nth.eq_ignore_ascii_case("l") {
                -1
            } else {
                nth.parse().map_err(|_| {
                    CronError(format!(
                        "day of week: {item:?}: #{nth} is not a week number"
                    ))
                })?
            };
            if n == 0 || !(-5..=5).contains(&n) {
                return Err(CronError(format!(
                    "day of week: {item:?}: the week number must be 1 to 5 or -1 to -5"
                )));
            }
            out.push(WeekdaySpec {
                day: d as u8,
                nth: Some(n),
                modulo: None,
            });
        } else if let Some((day, m)) = item.split_once('%') {
            let (m, k) = m.split_once('+').unwrap_or((m, "0"));
            let (m, k): (u32, u32) = match (m.parse(), k.parse()) {
                (Ok(m), Ok(k)) if m > 0 => (m, k),
                _ => {
                    return Err(CronError(format!(
                        "day of week: {item:?}: expected DAY%N or DAY%N+K with N above 0"
                    )))
                }
            };
            let d = WEEKDAY.value(day)? % 7;
            out.push(WeekdaySpec {
                day: d as u8,
                nth: None,
                modulo: Some((m, k % m)),
            });
        } else {
            for d in WEEKDAY.item(item)? {
                let d = (d % 7) as u8;
                if !out
                    .iter()
                    .any(|w: &WeekdaySpec| w.day == d && w.nth.is_none() && w.modulo.is_none())
                {
                    out.push(WeekdaySpec {
                        day: d,
                        nth: None,
                        modulo: None,
                    });
                }
            }
        }
    }
    Ok(out)
}

impl WeekdaySpec {
    fn matches(&self, date: Date) -> bool {
        if date.weekday().to_sunday_zero_offset() as u8 != self.day {
            return false;
        }
        if let Some(n) = self.nth {
            let day = i32::from(date.day());
            let ok = if n > 0 {
                (day - 1) / 7 + 1 == i32::from(n)
            } else {
                (i32::from(date.days_in_month()) - day) / 7 + 1 == -i32::from(n)
            };
            if !ok {
                return false;
            }
        }
        if let Some((m, k)) = self.modulo {
            // fugit's "reference week": weeks since 2019-01-01, counted from 1.
            let reference = jiff::civil::date(2019, 1, 1);
            let days = (date - reference).get_days();
            let rweek = days.div_euclid(7) + 1;
            if rweek.rem_euclid(m as i32) as u32 != k {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn next(expr: &str, zone: &str, after: &str) -> String {
        CronSchedule::parse(expr, zone)
            .expect("valid")
            .next_after(ts(after))
            .expect("fires")
            .to_string()
    }

    #[test]
    fn simple_fields_steps_lists_and_names() {
        assert_eq!(
            next("0 * * * *", "UTC", "2024-05-01T10:00:00Z"),
            "2024-05-01T11:00:00Z"
        );
        assert_eq!(
            next("*/15 * * * *", "UTC", "2024-05-01T10:07:30Z"),
            "2024-05-01T10:15:00Z"
        );
        assert_eq!(
            next("5,35 9-17/4 * * *", "UTC", "2024-05-01T09:35:00Z"),
            "2024-05-01T13:05:00Z"
        );
        assert_eq!(
            next("30 6 * * fri", "UTC", "2024-05-01T00:00:00Z"),
            "2024-05-03T06:30:00Z"
        );
        assert_eq!(
            next("0 0 1 JAN *", "UTC", "2024-05-01T00:00:00Z"),
            "2025-01-01T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", "UTC", "2024-05-01T00:00:00Z"),
            "2024-05-05T00:00:00Z"
        );
        assert_eq!(
            next("0 22 * * 1-5", "UTC", "2024-05-03T22:00:00Z"),
            "2024-05-06T22:00:00Z"
        );
        assert_eq!(
            next("10/20 * * * *", "UTC", "2024-05-01T10:31:00Z"),
            "2024-05-01T10:50:00Z"
        );
        assert_eq!(
            next("* * 3 6 *", "UTC", "2024-06-03T23:59:00Z"),
            "2025-06-03T00:00:00Z"
        );
    }

    #[test]
    fn shorthands() {
        assert_eq!(
            next("@daily", "UTC", "2024-05-01T10:00:00Z"),
            "2024-05-02T00:00:00Z"
        );
        assert_eq!(
            next("@hourly", "UTC", "2024-05-01T10:00:00Z"),
            "2024-05-01T11:00:00Z"
        );
        assert_eq!(
            next("@weekly", "UTC", "2024-05-01T10:00:00Z"),
            "2024-05-05T00:00:00Z"
        );
        assert_eq!(
            next("@monthly", "UTC", "2024-05-01T10:00:00Z"),
            "2024-06-01T00:00:00Z"
        );
        assert_eq!(
            next("@Yearly", "UTC", "2024-05-01T10:00:00Z"),
            "2025-01-01T00:00:00Z"
        );
        assert!(CronSchedule::parse("@reboot", "UTC").is_err());
    }

    #[test]
    fn day_of_month_or_day_of_week() {
        // The 13th or any Friday, whichever comes first.
        assert_eq!(
            next("0 0 13 * fri", "UTC", "2024-05-01T00:00:00Z"),
            "2024-05-03T00:00:00Z"
        );
        assert_eq!(
            next("0 0 13 * fri", "UTC", "2024-05-10T00:00:00Z"),
            "2024-05-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", "UTC", "2024-03-01T00:00:00Z"),
            "2028-02-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 L * *", "UTC", "2024-02-01T00:00:00Z"),
            "2024-02-29T00:00:00Z"
        );
        assert_eq!(
            next("0 0 L * *", "UTC", "2023-02-01T00:00:00Z"),
            "2023-02-28T00:00:00Z"
        );
    }

    #[test]
    fn fugit_hash_and_modulo() {
        // The second Monday of May 2024 is the 13th; the last Friday is the 31st.
        assert_eq!(
            next("0 0 * * 1#2", "UTC", "2024-05-01T00:00:00Z"),
            "2024-05-13T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * fri#-1", "UTC", "2024-05-01T00:00:00Z"),
            "2024-05-31T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * fri#L", "UTC", "2024-05-01T00:00:00Z"),
            "2024-05-31T00:00:00Z"
        );
        // Every other Sunday: 2019-01-06 is in reference week 1, so odd weeks fire with
        // `sun%2+1` and even weeks with `sun%2`.
        assert_eq!(
            next("0 9 * * sun%2+1", "UTC", "2019-01-01T00:00:00Z"),
            "2019-01-06T09:00:00Z"
        );
        assert_eq!(
            next("0 9 * * sun%2", "UTC", "2019-01-01T00:00:00Z"),
            "2019-01-13T09:00:00Z"
        );
        let s = CronSchedule::parse("0 9 * * sun%2", "UTC").expect("valid");
        let times = s.upcoming(ts("2024-05-01T00:00:00Z"), 3);
        let gaps: Vec<i64> = times
            .windows(2)
            .map(|w| (w[1].as_second() - w[0].as_second()) / 3600)
            .collect();
        assert_eq!(gaps, vec![14 * 24, 14 * 24]);
    }

    #[test]
    fn time_zones() {
        assert_eq!(
            next("0 9 * * *", "+05:30", "2024-05-01T00:00:00Z"),
            "2024-05-01T03:30:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "UTC-3", "2024-05-01T00:00:00Z"),
            "2024-05-01T12:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "-0800", "2024-05-01T00:00:00Z"),
            "2024-05-01T17:00:00Z"
        );
        // Berlin is UTC+2 in summer, UTC+1 in winter.
        assert_eq!(
            next("0 9 * * *", "Europe/Berlin", "2024-05-01T00:00:00Z"),
            "2024-05-01T07:00:00Z"
        );
        assert_eq!(
            next("0 9 * * *", "Europe/Berlin", "2024-12-01T00:00:00Z"),
            "2024-12-01T08:00:00Z"
        );
        // 02:30 does not exist on 31 March 2024 in Berlin: that day is skipped.
        assert_eq!(
            next("30 2 * * *", "Europe/Berlin", "2024-03-30T02:00:00Z"),
            "2024-04-01T00:30:00Z"
        );
        // 02:30 happens twice on 27 October 2024: both fire.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Berlin").expect("valid");
        let twice = s.upcoming(ts("2024-10-26T12:00:00Z"), 3);
        let shown: Vec<String> = twice.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "2024-10-27T00:30:00Z",
                "2024-10-27T01:30:00Z",
                "2024-10-28T01:30:00Z"
            ]
        );
        assert!(CronSchedule::parse("* * * * *", "Mars/Olympus").is_err());
        assert!(CronSchedule::parse("* * * * *", "+25:00").is_err());
        assert_eq!(
            CronSchedule::parse("* * * * *", "")
                .expect("utc")
                .time_zone_name(),
            "UTC"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let err = |e: &str| {
            CronSchedule::parse(e, "UTC")
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(err("60 * * * *"), "minute: 60 is outside 0-59");
        assert_eq!(err("* 24 * * *"), "hour: 24 is outside 0-23");
        assert_eq!(err("* * 0 * *"), "day of month: 0 is outside 1-31");
        assert_eq!(err("* * * 13 *"), "month: 13 is outside 1-12");
        assert_eq!(err("* * * * 8"), "day of week: 8 is outside 0-7");
        assert_eq!(
            err("* * * * funday"),
            "day of week: \"funday\" is not a number or a name"
        );
        assert_eq!(err("*/0 * * * *"), "minute: a step of 0 never fires");
        assert_eq!(err("5-1 * * * *"), "minute: the range 5-1 runs backwards");
        assert_eq!(
            err("* * * *"),
            "\"* * * *\": expected 5 fields (minute hour day-of-month month day-of-week), found 4"
        );
        assert_eq!(
            err("0 0 31 2 *"),
            "\"0 0 31 2 *\": never fires (no month has such a day)"
        );
        assert_eq!(
            err("* * * * 1#6"),
            "day of week: \"1#6\": the week number must be 1 to 5 or -1 to -5"
        );
        assert_eq!(
            err("* * * * 1%0"),
            "day of week: \"1%0\": expected DAY%N or DAY%N+K with N above 0"
        );
        assert_eq!(err("1,,2 * * * *"), "minute: empty list item in \"1,,2\"");
    }

    #[test]
    fn every_minute_is_every_minute() {
        let s = CronSchedule::parse("* * * * *", "UTC").expect("valid");
        let t = s.upcoming(ts("2024-12-31T23:58:30Z"), 3);
        let shown: Vec<String> = t.iter().map(|t| t.to_string()).collect();
        assert_eq!(
            shown,
            vec![
                "2024-12-31T23:59:00Z",
                "2025-01-01T00:00:00Z",
                "2025-01-01T00:01:00Z"
            ]
        );
    }
}
