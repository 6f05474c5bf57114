//! Calendar dates ↔ days since the Unix epoch (proleptic Gregorian, UTC), without a date crate:
//! Howard Hinnant's civil-from-days and days-from-civil. Used by the CLI's timestamps, the
//! Docker engine's clock-skew check and the simulated engine's RFC 3339 times.

/// Days since 1970-01-01 → (year, month 1–12, day 1–31).
pub fn from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

/// (year, month 1–12, day 1–31) → days since 1970-01-01.
pub fn to_days(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_days_both_ways() {
        for (days, date) in [
            (0, (1970, 1, 1)),
            (11_016, (2000, 2, 29)),
            (20_793, (2026, 12, 6)),
            (-1, (1969, 12, 31)),
            (-719_468, (0, 3, 1)),
        ] {
            assert_eq!(from_days(days), date, "{days}");
            assert_eq!(to_days(date.0, date.1, date.2), days, "{date:?}");
        }
    }

    #[test]
    fn round_trips_every_day_of_four_centuries() {
        for days in -73_000..73_000 {
            let (y, m, d) = from_days(days);
            assert_eq!(to_days(y, m, d), days);
        }
    }
}
