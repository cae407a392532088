//! Finds the programs some integration tests drive (redis-server, nginx, promtool, ...) and
//! tells the compiler which are installed, so that a test whose program is missing is marked
//! *ignored*, with the reason, in `cargo test`'s summary instead of passing without having run:
//!
//! ```ignore
//! #[cfg_attr(not(any(ci, have_redis_server)), ignore = "redis-server is not installed")]
//! ```
//!
//! `ci` is set when the `CI` variable is (as `.ci/run` does): there nothing is ignored, so a
//! program that CI installed and cannot find fails its tests. Why a build script rather than
//! runtime-ignored tests (the `libtest-mimic` crate): libtest's `ignore` is decided when a test is
//! compiled, and `libtest-mimic` would replace the harness of each test binary (`harness = false`
//! and a hand-made list of trials); cfgs keep every test a plain `#[test]`, one attribute line.
//!
//! The cost: the cfgs belong to the whole package, so when a watched directory changes (a program
//! installed or removed there) the build script runs again and the crate is compiled again.

#[allow(dead_code)] // the tests' helpers; only `find` is used here
#[path = "tests/it/common/tool.rs"]
mod tool;

/// The programs looked for, each with the cfg that says it is installed.
const TOOLS: [(&str, &str); 7] = [
    ("redis-server", "have_redis_server"),
    ("nginx", "have_nginx"),
    ("promtool", "have_promtool"),
    ("systemd-analyze", "have_systemd_analyze"),
    ("openssl", "have_openssl"),
    ("chromium", "have_chromium"),
    ("go", "have_go"),
];

fn main() {
    println!("cargo::rustc-check-cfg=cfg(ci)");
    println!("cargo::rerun-if-env-changed=CI");
    if std::env::var_os("CI").is_some() {
        println!("cargo::rustc-cfg=ci");
    }
    for (program, cfg) in TOOLS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        if tool::find(program).is_some() {
            println!("cargo::rustc-cfg={cfg}");
        }
    }
    // The tutorial's Go server, beside the project in ../shared (tests/it/loadgen_seed.rs); never
    // needed to build or pass, so its tests show as ignored where it is absent. Watched through
    // the directory that would hold it (a path that does not exist would rerun every build).
    println!("cargo::rustc-check-cfg=cfg(have_seed)");
    let shared = std::path::Path::new("../shared");
    if shared.join("seed/go/build.sh").is_file() {
        println!("cargo::rustc-cfg=have_seed");
    }
    let watched = if shared.is_dir() {
        "../shared/seed"
    } else {
        ".."
    };
    println!("cargo::rerun-if-changed={watched}");
    // Run again when the search changes: another PATH, or a program added to or removed from
    // one of its directories (which changes the directory's modification time).
    println!("cargo::rerun-if-env-changed=PATH");
    for dir in tool::search_path().filter(|dir| dir.is_dir()) {
        println!("cargo::rerun-if-changed={}", dir.display());
    }
}
