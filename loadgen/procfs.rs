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

impl Proc {
    /// Whether the process holds a socket listening on TCP `port` (its `/proc/PID/fd` links
    /// against the LISTEN entries of `/proc/net/tcp` and `tcp6`). `None` if that cannot be
    /// read (another user's process, say): then nothing is claimed.
    pub fn listens_on(&self, port: u16) -> Option<bool> {
        let mut inodes = Vec::new();
        for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
            let table = std::fs::read_to_string(file).ok()?;
            inodes.extend(listening_inodes(&table, port));
        }
        let fds = std::fs::read_dir(self.path("fd")).ok()?;
        let held = fds.flatten().any(|fd| {
            let link = std::fs::read_link(fd.path()).unwrap_or_default();
            let link = link.to_string_lossy();
            link.strip_prefix("socket:[")
                .and_then(|rest| rest.strip_suffix(']'))
                .and_then(|inode| inode.parse::<u64>().ok())
                .is_some_and(|inode| inodes.contains(&inode))
        });
        Some(held)
    }
}

/// The inodes of the sockets in LISTEN state (`0A`) on `port` in a `/proc/net/tcp` table.
fn listening_inodes(table: &str, port: u16) -> impl Iterator<Item = u64> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let local_port = fields.get(1)?.rsplit(':').next()?;
        let listening = *fields.get(3)? == "0A";
        let ours = u16::from_str_radix(local_port, 16).ok()? == port;
        (listening && ours).then(|| fields.get(9)?.parse().ok())?
    })
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
    fn listening_sockets_are_found_by_port() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n\
   1: 0100007F:1F90 0100007F:D2F0 01 00000000:00000000 00:00000000 00000000  1000        0 4243 1\n";
        assert_eq!(listening_inodes(table, 8080).collect::<Vec<_>>(), [4242]);
        assert_eq!(listening_inodes(table, 8081).count(), 0);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(Proc(None).listens_on(port), Some(true));
        drop(listener);
        assert_eq!(Proc(None).listens_on(port), Some(false));
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
