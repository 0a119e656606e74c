//! The README's first command, `demo` (here with `--once`): the whole store stack from the
//! real binaries, one scripted lane, and the sync daemon delivering the sale to the
//! simulated providers. Run here so that a broken demo fails CI, not a new store's first look.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[test]
fn the_demo_plays_its_lane_and_the_providers_receive_the_sale() {
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
