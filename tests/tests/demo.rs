//! The README's first command, `demo` (here with `--once`): the whole store stack from the
//! real binaries, one scripted lane, and the sync daemon delivering the sale to the
//! simulated providers. Run here so that a broken demo fails CI, not a new store's first look.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// One running demo at a time: each takes port 8443 when it looks free.
static ONE_DEMO: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_demo() -> std::sync::MutexGuard<'static, ()> {
    ONE_DEMO
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[test]
fn the_demo_plays_its_lane_and_the_providers_receive_the_sale() {
    let _one = one_demo();
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(e2e::binary("demo").unwrap())
        .arg("--once")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        cwd.path().join("demo-data/tls/cert.pem").exists(),
        "the demo keeps its store under ./demo-data"
    );
    // The scripted lane: the card, the total with the coupons applied, the commit.
    assert!(
        text.contains("== card scanned, customer 4000000000001:"),
        "{text}"
    );
    let applied = text
        .split("== total pressed, non-transient update applied:")
        .nth(1)
        .and_then(|rest| rest.split("== commit").next())
        .unwrap_or_else(|| panic!("{text}"));
    for coupon in ["BOGO1", "CVX1", "KPN1", "PCT10"] {
        assert!(applied.contains(coupon), "{coupon} not applied:\n{applied}");
    }
    assert!(text.contains("Digital coupons redeemed:"), "{text}");
    // Everything queued reached the providers.
    let queued = text.matches(" state=pending").count();
    assert!(queued >= 3, "{text}");
    assert_eq!(text.matches(" -> delivered").count(), queued, "{text}");
    assert!(!text.contains("not all delivered"), "{text}");
    assert!(text.contains("convercus redemption"), "{text}");
    assert!(text.contains("koupon redeem"), "{text}");
}

/// `demo --help` explains itself and starts nothing (it started the whole stack); an
/// unknown argument is refused.
#[test]
fn demo_help_starts_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(e2e::binary("demo").unwrap())
        .arg("--help")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: demo [--once]"));
    assert!(!cwd.path().join("demo-data").exists());
    let out = std::process::Command::new(e2e::binary("demo").unwrap())
        .arg("--bogus")
        .current_dir(cwd.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(!cwd.path().join("demo-data").exists());
}

/// The processes `pid` started (the edge server, the sync daemon, the provider simulator).
fn children_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so read after its ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let ppid = after.split_whitespace().nth(1).and_then(|p| p.parse().ok());
        if ppid == Some(pid) {
            found.extend(
                entry
                    .file_name()
                    .to_str()
                    .and_then(|p| p.parse::<u32>().ok()),
            );
        }
    }
    found
}

/// Whether process `pid` still runs (a zombie does not).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        after.split_whitespace().next() != Some("Z")
    })
}

/// A demo stopped by SIGTERM (`kill`, `timeout`) stops the stack it started; it left the
/// edge server, the sync daemon and the simulator running (only Ctrl-C stopped them).
#[test]
fn a_demo_stopped_by_sigterm_leaves_nothing_running() {
    use std::io::{BufRead, BufReader};
    let _one = one_demo();
    let cwd = tempfile::tempdir().unwrap();
    let mut demo = std::process::Command::new(e2e::binary("demo").unwrap())
        .current_dir(cwd.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = demo.stdout.take().unwrap();
    let serving = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("press Ctrl-C to stop"));
    assert!(serving, "the demo never said it was serving");
    let stack = children_of(demo.id());
    assert_eq!(
        stack.len(),
        3,
        "edge server, sync daemon, simulator: {stack:?}"
    );
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &demo.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(demo.wait().unwrap().success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let left: Vec<u32> = stack.iter().copied().filter(|p| running(*p)).collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
