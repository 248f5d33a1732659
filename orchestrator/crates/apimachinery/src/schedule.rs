//! CronJob schedules: upstream's syntax (five cron fields, or `@yearly`,
//! `@monthly`, `@weekly`, `@daily`/`@midnight`, `@hourly`) in the UTC or in
//! the IANA zone of `spec.timeZone`, parsed by `croner` over `jiff`'s
//! bundled time zone database. Used by validation (the messages are the
//! field errors) and by the CronJob controller (the times it starts at).

use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use jiff::Timestamp;
use jiff::tz::TimeZone;

/// A parsed `spec.schedule` in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: TimeZone,
}

impl Schedule {
    /// Parses `schedule` in `time_zone` (UTC when `None`); the error is the
    /// field path and its upstream message.
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Schedule, (&'static str, String)> {
        let zone = match time_zone {
            None => TimeZone::UTC,
            Some(tz) => zone(tz).map_err(|m| ("spec.timeZone", m))?,
        };
        if schedule.contains("TZ") {
            return Err((
                "spec.schedule",
                format!(
                    "Invalid value: \"{schedule}\": cannot use TZ or CRON_TZ in schedule, use timeZone field instead"
                ),
            ));
        }
        let pattern = if schedule.trim().eq_ignore_ascii_case("@midnight") { "@daily" } else { schedule.trim() };
        let fields = pattern.split_whitespace().count();
        if !pattern.starts_with('@') && fields != 5 {
            return Err((
                "spec.schedule",
                format!("Invalid value: \"{schedule}\": expected exactly 5 fields, found {fields}: [{pattern}]"),
            ));
        }
        let parser = CronParser::builder().seconds(Seconds::Disallowed).year(Year::Disallowed).build();
        let cron =
            parser.parse(pattern).map_err(|e| ("spec.schedule", format!("Invalid value: \"{schedule}\": {e}")))?;
        Ok(Schedule { cron, zone })
    }

    /// The first start strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.zone.clone());
        self.cron.find_next_occurrence(&z, false).ok().map(|n| n.timestamp())
    }
}

/// An IANA zone name as upstream accepts it (`Local` is refused).
fn zone(tz: &str) -> Result<TimeZone, String> {
    if tz.is_empty() {
        return Err(format!("Invalid value: \"{tz}\": timeZone must be nil or non-empty string"));
    }
    if tz.eq_ignore_ascii_case("Local") {
        return Err(format!(
            "Invalid value: \"{tz}\": timeZone must be an explicit time zone as defined in https://www.iana.org/time-zones"
        ));
    }
    TimeZone::get(tz).map_err(|_| format!("Invalid value: \"{tz}\": unknown time zone {tz}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn standard_fields_and_nicknames() {
        let s = Schedule::parse("*/5 * * * *", None).unwrap();
        assert_eq!(s.next_after(at("2026-01-01T00:02:00Z")), Some(at("2026-01-01T00:05:00Z")));
        assert_eq!(s.next_after(at("2026-01-01T00:05:00Z")), Some(at("2026-01-01T00:10:00Z")));
        let h = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(h.next_after(at("2026-01-01T00:00:00Z")), Some(at("2026-01-01T01:00:00Z")));
        let m = Schedule::parse("@midnight", None).unwrap();
        assert_eq!(m.next_after(at("2026-01-01T10:00:00Z")), Some(at("2026-01-02T00:00:00Z")));
    }

    #[test]
    fn time_zones_follow_the_wall_clock() {
        // 09:00 in New York is 14:00 UTC in winter and 13:00 UTC in summer.
        let s = Schedule::parse("0 9 * * *", Some("America/New_York")).unwrap();
        assert_eq!(s.next_after(at("2026-01-10T00:00:00Z")), Some(at("2026-01-10T14:00:00Z")));
        assert_eq!(s.next_after(at("2026-07-10T00:00:00Z")), Some(at("2026-07-10T13:00:00Z")));
    }

    #[test]
    fn bad_schedules_and_zones_name_the_field() {
        let e = Schedule::parse("* * *", None).unwrap_err();
        assert_eq!(
            e,
            ("spec.schedule", "Invalid value: \"* * *\": expected exactly 5 fields, found 3: [* * *]".into())
        );
        assert_eq!(Schedule::parse("61 * * * *", None).unwrap_err().0, "spec.schedule");
        assert_eq!(Schedule::parse("0 0 * * * *", None).unwrap_err().0, "spec.schedule");
        let e = Schedule::parse("CRON_TZ=UTC 0 * * * *", None).unwrap_err();
        assert!(e.1.ends_with("cannot use TZ or CRON_TZ in schedule, use timeZone field instead"), "{e:?}");
        let e = Schedule::parse("0 * * * *", Some("Mars/Olympus")).unwrap_err();
        assert_eq!(e, ("spec.timeZone", "Invalid value: \"Mars/Olympus\": unknown time zone Mars/Olympus".into()));
        assert_eq!(Schedule::parse("0 * * * *", Some("Local")).unwrap_err().0, "spec.timeZone");
    }
}
