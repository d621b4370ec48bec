//! Cron schedules as CronJobs write them (the standard five fields, as
//! kube's robfig/cron parser reads them): minute, hour, day of month,
//! month, day of week; numbers, names (`jan`, `mon`), ranges, lists,
//! steps, `*`/`?`, and the `@yearly` ... `@hourly` macros. A day matches
//! when both day fields match, or, when neither is `*`, either does.

use jiff::civil::DateTime;
use jiff::ToSpan;

/// A parsed schedule: the allowed values of each field as bit sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day of month or day of week was `*`: both must match.
    any_day: bool,
}

const RANGES: [(u32, u32); 5] = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)];
const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

impl Schedule {
    /// Parses `s`, or says what is wrong with it.
    pub fn parse(s: &str) -> Result<Schedule, String> {
        let s = s.trim();
        let expanded = match s.strip_prefix('@') {
            Some("yearly" | "annually") => "0 0 1 1 *",
            Some("monthly") => "0 0 1 * *",
            Some("weekly") => "0 0 * * 0",
            Some("daily" | "midnight") => "0 0 * * *",
            Some("hourly") => "0 * * * *",
            Some(_) => return Err(format!("unrecognized descriptor: {s}")),
            None => s,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {s}",
                fields.len()
            ));
        }
        let mut sets = [0u64; 5];
        for (i, field) in fields.iter().enumerate() {
            sets[i] =
                field_set(i, field).ok_or_else(|| format!("invalid field {field:?} in {s}"))?;
        }
        // Sunday is 0 or 7.
        if sets[4] & (1 << 7) != 0 {
            sets[4] |= 1;
        }
        let star = |f: &str| f.starts_with('*') || f.starts_with('?');
        Ok(Schedule {
            minutes: sets[0],
            hours: sets[1],
            days: sets[2],
            months: sets[3],
            weekdays: sets[4],
            any_day: star(fields[2]) || star(fields[4]),
        })
    }

    fn day_matches(&self, t: DateTime) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().to_sunday_zero_offset()) != 0;
        if self.any_day {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// Whether the minute starting at `t` (seconds ignored) is scheduled.
    pub fn matches(&self, t: DateTime) -> bool {
        self.minutes & (1 << t.minute()) != 0
            && self.hours & (1 << t.hour()) != 0
            && self.months & (1 << t.month()) != 0
            && self.day_matches(t)
    }

    /// The first scheduled minute strictly after `t`, within five years
    /// (`None` for a schedule that never comes, such as `0 0 30 2 *`).
    pub fn next_after(&self, t: DateTime) -> Option<DateTime> {
        let start = t.with().second(0).subsec_nanosecond(0).build().ok()?;
        let mut t = start.checked_add(1.minute()).ok()?;
        let end = start.checked_add(5.years()).ok()?;
        while t < end {
            if self.months & (1 << t.month()) == 0 {
                t = t
                    .first_of_month()
                    .checked_add(1.month())
                    .ok()?
                    .with()
                    .hour(0)
                    .minute(0)
                    .build()
                    .ok()?;
                continue;
            }
            if !self.day_matches(t) {
                t = t
                    .date()
                    .checked_add(1.day())
                    .ok()?
                    .to_datetime(jiff::civil::time(0, 0, 0, 0));
                continue;
            }
            if self.hours & (1 << t.hour()) == 0 {
                t = t
                    .with()
                    .minute(0)
                    .build()
                    .ok()?
                    .checked_add(1.hour())
                    .ok()?;
                continue;
            }
            if self.minutes & (1 << t.minute()) == 0 {
                t = t.checked_add(1.minute()).ok()?;
                continue;
            }
            return Some(t);
        }
        None
    }
}

/// The values one field allows, as a bit set.
fn field_set(i: usize, field: &str) -> Option<u64> {
    let (lo, hi) = RANGES[i];
    let value = |v: &str| -> Option<u32> {
        let names: &[&str] = match i {
            3 => &MONTHS,
            4 => &DAYS,
            _ => &[],
        };
        let named = names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(v))
            .and_then(|p| u32::try_from(p).ok())
            .map(|p| if i == 3 { p + 1 } else { p });
        named
            .or_else(|| v.parse().ok())
            .filter(|n| (lo..=hi).contains(n))
    };
    let mut set = 0u64;
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, st)) => (r, Some(st.parse::<u32>().ok().filter(|n| *n > 0)?)),
            None => (part, None),
        };
        let (a, b) = match range {
            "*" | "?" => (lo, hi),
            r => match r.split_once('-') {
                Some((a, b)) => (value(a)?, value(b)?),
                // `5/15` runs from 5 to the end of the range.
                None if step.is_some() => (value(r)?, hi),
                None => {
                    let v = value(r)?;
                    (v, v)
                }
            },
        };
        if a > b {
            return None;
        }
        let step = step.unwrap_or(1);
        let mut v = a;
        while v <= b {
            set |= 1 << v;
            v += step;
        }
    }
    Some(set)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    fn next(s: &str, from: DateTime) -> DateTime {
        Schedule::parse(s).unwrap().next_after(from).unwrap()
    }

    #[test]
    fn next_times_follow_each_field() {
        let t = date(2026, 12, 7).at(6, 7, 30, 0);
        assert_eq!(next("* * * * *", t), date(2026, 12, 7).at(6, 8, 0, 0));
        assert_eq!(next("*/15 * * * *", t), date(2026, 12, 7).at(6, 15, 0, 0));
        assert_eq!(next("5/20 * * * *", t), date(2026, 12, 7).at(6, 25, 0, 0));
        assert_eq!(
            next("0 9-17 * * mon-fri", t),
            date(2026, 12, 7).at(9, 0, 0, 0)
        );
        assert_eq!(next("@hourly", t), date(2026, 12, 7).at(7, 0, 0, 0));
        assert_eq!(next("@yearly", t), date(2027, 1, 1).at(0, 0, 0, 0));
        assert_eq!(next("30 2 29 feb *", t), date(2028, 2, 29).at(2, 30, 0, 0));
        // Sunday as 7; 2026-12-13 is a Sunday.
        assert_eq!(next("0 0 * * 7", t), date(2026, 12, 13).at(0, 0, 0, 0));
        // Both day fields set: either matches (the 10th or a Saturday).
        assert_eq!(next("0 0 10 * sat", t), date(2026, 12, 10).at(0, 0, 0, 0));
        assert_eq!(
            next("0 0 1,15 jan,jul *", t),
            date(2027, 1, 1).at(0, 0, 0, 0)
        );
        assert!(Schedule::parse("0 0 30 2 *")
            .unwrap()
            .next_after(t)
            .is_none());
    }

    #[test]
    fn bad_schedules_say_why() {
        for (s, why) in [
            ("* * * *", "expected exactly 5 fields, found 4"),
            ("60 * * * *", "invalid field \"60\""),
            ("*/0 * * * *", "invalid field \"*/0\""),
            ("5-1 * * * *", "invalid field \"5-1\""),
            ("@every 5m", "unrecognized descriptor"),
            ("* * * foo *", "invalid field \"foo\""),
        ] {
            let e = Schedule::parse(s).unwrap_err();
            assert!(e.contains(why), "{s}: {e}");
        }
    }
}
