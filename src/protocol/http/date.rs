//! The `Date` header, formatted once per second per core.

use std::cell::RefCell;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::util::civil_from_days;

/// This core's formatted `Date` and the monotonic instant until which it holds.
struct Cached {
    until: Option<Instant>,
    text: [u8; 29],
}

thread_local! {
    static CACHED: RefCell<Cached> = const { RefCell::new(Cached { until: None, text: [0; 29] }) };
}

/// Appends the current time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`). `now` is the
/// core's recent monotonic reading (`tidepool_io::clock`): the wall clock is read and the date
/// formatted only when `now` passes the end of the second last formatted, so most answers read
/// no clock here at all.
pub fn write_now(out: &mut Vec<u8>, now: Instant) {
    CACHED.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.until.is_none_or(|until| now >= until) {
            let wall = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or(Duration::ZERO);
            cached.text = format_imf(wall.as_secs());
            // Both clocks advance at the same rate; the date is read again when this second ends.
            let left = Duration::from_nanos(u64::from(1_000_000_000 - wall.subsec_nanos()));
            cached.until = Some(Instant::now() + left);
        }
        out.extend_from_slice(&cached.text);
    });
}

pub fn format_imf(secs: u64) -> [u8; 29] {
    const DAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut buf = [0u8; 29];
    buf[..3].copy_from_slice(DAYS[(days % 7) as usize]);
    buf[3..5].copy_from_slice(b", ");
    let two = |v: u64, b: &mut [u8]| {
        b[0] = b'0' + (v / 10) as u8;
        b[1] = b'0' + (v % 10) as u8;
    };
    two(day as u64, &mut buf[5..7]);
    buf[7] = b' ';
    buf[8..11].copy_from_slice(MONTHS[(month - 1) as usize]);
    buf[11] = b' ';
    let y = year.clamp(0, 9999) as u64;
    two(y / 100, &mut buf[12..14]);
    two(y % 100, &mut buf[14..16]);
    buf[16] = b' ';
    two(rem / 3600, &mut buf[17..19]);
    buf[19] = b':';
    two(rem / 60 % 60, &mut buf[20..22]);
    buf[22] = b':';
    two(rem % 60, &mut buf[23..25]);
    buf[25..29].copy_from_slice(b" GMT");
    buf
}

#[cfg(test)]
mod tests {
    #[test]
    fn imf_dates() {
        for (secs, expected) in [
            (784_111_777, "Sun, 06 Nov 1994 08:49:37 GMT"),
            (0, "Thu, 01 Jan 1970 00:00:00 GMT"),
            (951_782_400, "Tue, 29 Feb 2000 00:00:00 GMT"),
        ] {
            assert_eq!(
                std::str::from_utf8(&super::format_imf(secs)).unwrap(),
                expected
            );
        }
    }
}
