//! What a service process holds, read from /proc: resident memory and open file descriptors, so a
//! drill can show that an attack or a fault leaves the process bounded.

use anyhow::{Context, Result};

/// Resident set size (`VmRSS` of /proc/<pid>/status), in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("cannot read /proc/{pid}/status (is the process alive?)"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS line in /proc/{pid}/status"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        line.strip_prefix("VmRSS:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()
    })
}

/// Open file descriptors (sockets included) of the process.
pub fn open_fds(pid: u32) -> Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("cannot list /proc/{pid}/fd"))?
        .count())
}

/// `rss_kib` as MiB with one decimal, for the details.
pub fn mib(kib: u64) -> String {
    // Exact enough for display: KiB counts stay far below 2^52.
    #[allow(clippy::cast_precision_loss)]
    let m = kib as f64 / 1024.0;
    format!("{m:.1} MiB")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn reads_vm_rss_and_fds_of_this_process() {
        assert_eq!(
            parse_vm_rss("Name:\tx\nVmRSS:\t   12345 kB\nVmSwap:\t0 kB\n"),
            Some(12345)
        );
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        assert!(open_fds(me).unwrap() >= 3);
        assert_eq!(mib(1536), "1.5 MiB");
    }
}
