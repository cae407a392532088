//! The oldest Rust this crate builds with, as `Cargo.toml`'s `rust-version` and the README state
//! it, must be at least what every locked dependency declares: a dependency update that needs
//! a newer compiler fails here instead of on a newcomer's first `cargo run`. The figures come
//! from `cargo metadata` over the lock file (dev-dependencies included: `cargo test` is one of
//! the README's two commands), for this host's platform, offline. The figures are declared, not
//! built: `.ci/run` builds with that toolchain too (`cargo +1.88 check --all-targets --locked`),
//! which finds a newer API used in our own code.

use std::process::Command;

use serde_json::Value;

/// `1.88` or `1.88.0` as comparable numbers.
fn version(text: &str) -> Vec<u64> {
    let mut parts: Vec<u64> = text.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    parts.resize(3, 0);
    parts
}

fn host_triple() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .expect("a host line in rustc -vV")
        .to_string()
}

/// `(name, version, rust_version)` of every package in the locked graph for this platform.
fn locked_packages() -> Vec<(String, String, String)> {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &host_triple()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let metadata: Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let in_graph: Vec<&Value> = metadata["resolve"]["nodes"]
        .as_array()
        .expect("resolve nodes")
        .iter()
        .map(|node| &node["id"])
        .collect();
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    metadata["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .filter(|p| in_graph.contains(&&p["id"]))
        .map(|p| {
            (
                text(&p["name"]),
                text(&p["version"]),
                text(&p["rust_version"]),
            )
        })
        .collect()
}

#[test]
fn rust_version_covers_every_locked_dependency() {
    let ours = env!("CARGO_PKG_RUST_VERSION");
    let packages = locked_packages();
    assert!(packages.len() > 50, "too few packages: {}", packages.len());
    let needs = packages
        .iter()
        .filter(|(name, _, _)| name != env!("CARGO_PKG_NAME"))
        .max_by_key(|(_, _, rust)| version(rust))
        .expect("dependencies");
    let (name, at, rust) = needs;
    assert!(
        version(rust) <= version(ours),
        "{name} {at} declares Rust {rust}, but Cargo.toml's rust-version is {ours}: raise it (and \
         the README's) or pin an older {name} with cargo update --precise"
    );
}

#[test]
fn the_readme_states_the_same_minimum() {
    let readme = include_str!("../../README.md");
    let ours = env!("CARGO_PKG_RUST_VERSION");
    assert!(
        readme.contains(&format!("a Rust toolchain ({ours} or newer")),
        "README.md does not say \"a Rust toolchain ({ours} or newer\""
    );
}
