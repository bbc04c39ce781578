//! Small pure helpers shared by several subsystems (calendar arithmetic). No I/O, no state.

/// Days since 1970-01-01 → (year, month 1-12, day 1-31), proleptic Gregorian.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Appends `ms` since the epoch as ISO-8601 UTC with milliseconds: `2024-06-10T06:13:20.125Z`.
pub fn write_iso8601_ms(out: &mut String, ms: i64) {
    use std::fmt::Write;
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (year, month, day) = civil_from_days(days);
    let _ = write!(
        out,
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        in_day / 3_600_000,
        in_day / 60_000 % 60,
        in_day / 1000 % 60,
        in_day % 1000
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn iso_dates() {
        for (ms, expected) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (1_718_000_000_125, "2024-06-10T06:13:20.125Z"),
            (-1, "1969-12-31T23:59:59.999Z"),
        ] {
            let mut s = String::new();
            super::write_iso8601_ms(&mut s, ms);
            assert_eq!(s, expected);
        }
    }
}
