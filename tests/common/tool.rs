//! The programs beside the server that some tests drive: `redis-server`, `nginx`, `promtool`.
//!
//! One rule for all of them: where a program is missing, the test says so and passes, so that
//! `cargo test` works on a bare machine; under CI (`CI` set, as `.ci/run` does) a missing
//! program fails the test, so CI can never go green by skipping. Shared by `tests/common` and
//! `benches/e2e.rs` (which includes this file by path), so it depends on nothing else.

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Where `name` is installed: on `PATH`, or in the sbin directories Debian puts daemons in
/// (`/usr/sbin/nginx`), which a non-root user's `PATH` may lack.
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` cannot be run (`why`): `None` outside CI, after saying so; a failed test in CI.
pub fn unavailable<T>(program: &str, package: &str, why: impl Display) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{program} is required in CI ({why}); apt-get install {package}");
    }
    eprintln!("{program} not run ({why}); CI installs it (apt-get install {package})");
    None
}

/// `find(program)`, or [`unavailable`] when it is not installed.
pub fn require(program: &str, package: &str) -> Option<PathBuf> {
    find(program).or_else(|| unavailable(program, package, "not installed"))
}
