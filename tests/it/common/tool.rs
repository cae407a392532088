//! The programs beside the server that some tests drive: `redis-server`, `nginx`, `promtool`.
//!
//! One rule for all of them: a test that needs a program carries
//! `#[cfg_attr(not(any(ci, have_PROGRAM)), ignore = "PROGRAM is not installed")]`, whose cfgs
//! `build.rs` sets (it finds programs with [`find`], from this file), so that on a machine
//! without the program `cargo test` counts the test as ignored, with its reason, rather than
//! passed. A test that runs all the same (under CI, with `--include-ignored`, or after the
//! program went away) and cannot start its program fails: [`unavailable`] panics. Shared by
//! `tests/it/common`, `build.rs` and `benches/e2e.rs` (which include this file by path), so it
//! depends on nothing else.

use std::fmt::Display;
use std::path::{Path, PathBuf};

/// Where `name` is installed: on `PATH`, or in the sbin directories Debian puts daemons in
/// (`/usr/sbin/nginx`), which a non-root user's `PATH` may lack.
pub fn find(name: &str) -> Option<PathBuf> {
    search_path()
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// The directories [`find`] looks in, in order.
pub fn search_path() -> impl Iterator<Item = PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .collect::<Vec<_>>()
        .into_iter()
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `program` cannot be run (`why`): the test fails, naming the package to install. (A test
/// whose program is not installed is normally not run at all: see the module's comment. The
/// `Option` is kept for callers written when this returned `None` outside CI.)
pub fn unavailable<T>(program: &str, package: &str, why: impl Display) -> Option<T> {
    panic!("{program} cannot be run ({why}); apt-get install {package}");
}

/// `find(program)`, or [`unavailable`] when it is not installed.
pub fn require(program: &str, package: &str) -> Option<PathBuf> {
    find(program).or_else(|| unavailable(program, package, "not installed"))
}
