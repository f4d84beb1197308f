//! CPU time of this process (user + system, all threads), from /proc: both ends of a loopback
//! benchmark run in this process, so it covers sender and receiver.

/// CPU seconds used by this process so far; `None` off Linux.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may contain spaces; fields after its closing parenthesis are
    // plain numbers. utime and stime are fields 14 and 15 (proc(5)).
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks_per_second())
}

/// AT_CLKTCK from the auxiliary vector (getauxval(3)), without unsafe code; 100 if unreadable,
/// which is what Linux uses on every common architecture.
fn clock_ticks_per_second() -> f64 {
    const AT_CLKTCK: u64 = 17;
    let Ok(auxv) = std::fs::read("/proc/self/auxv") else {
        return 100.0;
    };
    auxv.chunks_exact(16)
        .map(|pair| {
            let key = u64::from_ne_bytes(pair[..8].try_into().unwrap_or([0; 8]));
            let value = u64::from_ne_bytes(pair[8..].try_into().unwrap_or([0; 8]));
            (key, value)
        })
        .find(|(key, _)| *key == AT_CLKTCK)
        .map(|(_, ticks)| ticks as f64)
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cpu_time_advances() {
        let before = super::process_cpu_seconds().expect("/proc/self/stat readable");
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let after = super::process_cpu_seconds().unwrap();
        assert!(after - before >= 0.05, "{before} -> {after}");
    }
}
