//! Time as a parameter, so expiry can be tested without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Seconds since the Unix epoch.
pub type Timestamp = i64;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Timestamp;
    /// Milliseconds since the epoch, for records that order events within a second.
    fn now_millis(&self) -> i64 {
        self.now() * 1000
    }
}

pub type SharedClock = Arc<dyn Clock>;

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    }
    fn now_millis(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that only moves when told to; for tests.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(start: Timestamp) -> Self {
        Self(AtomicI64::new(start))
    }
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now())
    }
    pub fn advance(&self, secs: i64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        self.0.load(Ordering::SeqCst)
    }
}

/// The UTC calendar date of `ts` as `YYYYMMDD` (proleptic Gregorian; days-to-civil after
/// Howard Hinnant's published algorithm).
pub fn utc_date_compact(ts: Timestamp) -> String {
    let (year, month, day) = civil(ts.div_euclid(86_400));
    format!("{year:04}{month:02}{day:02}")
}

/// `ms` (milliseconds since the epoch) as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (year, month, day) = civil(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        t / 3600,
        t / 60 % 60,
        t % 60,
        ms.rem_euclid(1000)
    )
}

/// Days since the epoch as (year, month, day).
fn civil(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates_from_timestamps() {
        assert_eq!(super::utc_date_compact(0), "19700101");
        assert_eq!(super::utc_date_compact(951_782_400), "20000229");
        assert_eq!(super::utc_date_compact(1_796_083_200), "20261201");
        assert_eq!(super::utc_date_compact(1_796_083_199), "20261130");
        assert_eq!(
            super::rfc3339_millis(1_796_083_199_007),
            "2026-11-30T23:59:59.007Z"
        );
    }
}
