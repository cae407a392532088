//! What the kernel says about a process, read from `/proc`: resident memory (now and at its
//! peak), CPU time and open file descriptors. Used on the server (`--server-pid`) and on the
//! generator itself, whose own CPU use shows whether it, rather than the server, was the
//! bottleneck.

use std::io;

/// A process to watch: `None` is this one.
#[derive(Debug, Clone, Copy)]
pub struct Proc(pub Option<u32>);

impl Proc {
    fn path(&self, file: &str) -> String {
        match self.0 {
            Some(pid) => format!("/proc/{pid}/{file}"),
            None => format!("/proc/self/{file}"),
        }
    }

    /// Resident set size now, in KiB (`VmRSS`).
    pub fn rss_kib(&self) -> io::Result<u64> {
        self.status_field("VmRSS")
    }

    /// Peak resident set size over the process's life, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> io::Result<u64> {
        self.status_field("VmHWM")
    }

    fn status_field(&self, field: &str) -> io::Result<u64> {
        let text = std::fs::read_to_string(self.path("status"))?;
        status_field(&text, field).ok_or_else(|| invalid(format!("no {field} in status")))
    }

    /// Open file descriptors: the entries of `/proc/PID/fd`.
    pub fn fd_count(&self) -> io::Result<usize> {
        let mut n = 0;
        for entry in std::fs::read_dir(self.path("fd"))? {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// User plus system CPU time, in seconds.
    pub fn cpu_seconds(&self) -> io::Result<f64> {
        let text = std::fs::read_to_string(self.path("stat"))?;
        let ticks = cpu_ticks(&text).ok_or_else(|| invalid("unreadable stat".into()))?;
        Ok(ticks as f64 / ticks_per_second() as f64)
    }
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Clock ticks per second, the unit of the CPU times in `/proc/PID/stat`.
fn ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100 // what Linux uses everywhere
    }
}

/// A `Name:   1234 kB` line of `/proc/PID/status`.
fn status_field(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let value = line.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// `utime + stime` from `/proc/PID/stat`. The process name (field 2) is in parentheses and may
/// itself hold spaces or parentheses, so fields are counted from the last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3 onwards; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_fields() {
        let status = "Name:\tmio-chat\nVmHWM:\t  52340 kB\nVmRSS:\t   4096 kB\n";
        assert_eq!(status_field(status, "VmRSS"), Some(4096));
        assert_eq!(status_field(status, "VmHWM"), Some(52340));
        assert_eq!(status_field(status, "VmSwap"), None);
    }

    #[test]
    fn cpu_time_past_an_awkward_name() {
        let stat = "4242 (a) b) c) S 1 4242 4242 0 -1 4194560 120 0 0 0 37 5 0 0 20 0 1 0";
        assert_eq!(cpu_ticks(stat), Some(42));
        assert_eq!(cpu_ticks("garbage"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        let me = Proc(None);
        let rss = me.rss_kib().unwrap();
        assert!(rss > 0);
        assert!(me.peak_rss_kib().unwrap() >= rss);
        assert!(me.cpu_seconds().unwrap() >= 0.0);
        // The directory being read is itself open while it is counted.
        assert!(me.fd_count().unwrap() >= 1);
    }
}
