//! Wall-clock time for token and session lifetimes.

/// Seconds since the Unix epoch from the kernel's coarse real-time clock.
///
/// Lifetimes are judged in whole seconds (`exp`, `iat`, session timeouts), so the coarse clock's
/// resolution of a scheduler tick (a few milliseconds) loses nothing, and reading it is a load
/// from the vDSO page instead of a timer read: it is taken on every authenticated request.
pub fn unix_now() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME_COARSE exists on every Linux
    // this runs on (2.6.32+), and clock_gettime writes nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) };
    if rc != 0 {
        return std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agrees_with_the_system_clock() {
        let precise = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let coarse = unix_now();
        // A tick or two apart at most, and never a different epoch or unit.
        assert!((precise - coarse).abs() < 0.1, "{precise} vs {coarse}");
    }
}
