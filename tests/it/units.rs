//! The systemd units in `deploy/`: `systemd-analyze verify` accepts them, `systemd-analyze
//! security` rates their sandbox "OK" or better, the two share that sandbox line for line, and
//! both run the binary where `docs/operations.md` installs it, reload with SIGHUP and raise the
//! open-file limit. (The systemd tests are ignored where `systemd-analyze` is not installed;
//! CI installs Debian's `systemd` for it.)

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy");
const UNITS: [&str; 2] = ["mio-chat.service", "mio-chat@.service"];
/// Where `docs/operations.md` puts the binary, and so what the units run.
const INSTALLED: &str = "/usr/local/bin/mio-chat";
/// `systemd-analyze security` calls an exposure below this "OK" (below 1.0, "SAFE").
const OK_BELOW: f64 = 2.0;

fn unit(name: &str) -> String {
    std::fs::read_to_string(Path::new(DEPLOY).join(name)).expect("read a unit")
}

/// The units copied into a directory of the test's own, each running the binary cargo built
/// instead of `/usr/local/bin/mio-chat` (`verify` checks that the command exists, and a build
/// machine has none installed); the template as instance 0 (its `CPUAffinity=%i` needs a
/// number).
fn staged(test: &str) -> Vec<PathBuf> {
    let dir = std::env::temp_dir().join(format!("mio-chat-units-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("a directory for the units");
    UNITS
        .iter()
        .map(|name| {
            let text = unit(name).replace(INSTALLED, env!("CARGO_BIN_EXE_mio-chat"));
            let path = dir.join(name.replace("@.", "@0."));
            std::fs::write(&path, text).expect("write a unit");
            path
        })
        .collect()
}

fn systemd_analyze(args: &[&str], units: &[PathBuf]) -> Output {
    let program = common::tool::require("systemd-analyze", "systemd").expect("systemd-analyze");
    Command::new(program)
        .args(args)
        .args(units)
        .output()
        .expect("run systemd-analyze")
}

#[test]
#[cfg_attr(
    not(any(ci, have_systemd_analyze)),
    ignore = "systemd-analyze is not installed"
)]
fn the_units_pass_systemd_analyze_verify() {
    let out = systemd_analyze(&["verify", "--man=no"], &staged("verify"));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

/// The sandbox scores "OK" (docs/operations.md explains each setting and states the score).
#[test]
#[cfg_attr(
    not(any(ci, have_systemd_analyze)),
    ignore = "systemd-analyze is not installed"
)]
fn the_units_sandbox_rates_ok() {
    for path in staged("security") {
        let out = systemd_analyze(
            &["security", "--offline=true", "--no-pager"],
            std::slice::from_ref(&path),
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let overall = text
            .lines()
            .find_map(|line| {
                line.split_once("Overall exposure level for ")?
                    .1
                    .split_once(": ")
            })
            .map(|(_, score)| {
                score
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_else(|| panic!("no overall exposure for {}:\n{text}", path.display()));
        let exposure: f64 = overall.parse().expect("a number");
        assert!(
            exposure < OK_BELOW,
            "{}: exposure {exposure}, not OK:\n{text}",
            path.display()
        );
    }
}

/// The lines from `# Who it runs as` to `[Install]`: the sandbox.
fn sandbox(text: &str) -> &str {
    let start = text
        .find("# Who it runs as")
        .expect("the sandbox's first line");
    let end = text.find("[Install]").expect("[Install]");
    &text[start..end]
}

#[test]
fn both_units_share_one_sandbox_and_run_the_installed_binary() {
    let (single, template) = (unit(UNITS[0]), unit(UNITS[1]));
    assert_eq!(sandbox(&single), sandbox(&template));
    for text in [&single, &template] {
        for line in [
            &format!("ExecStart={INSTALLED}\n") as &str,
            "ExecReload=/bin/kill -HUP $MAINPID\n",
            "LimitNOFILE=1048576\n",
            "DynamicUser=yes\n",
        ] {
            assert!(text.contains(line), "a unit lacks {line:?}");
        }
    }
    assert!(
        template.contains("CPUAffinity=%i\n")
            && template.contains("After=network.target redis-server.service\n")
    );
}
