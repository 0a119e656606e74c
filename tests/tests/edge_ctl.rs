//! `edge-ctl config-package`: a regional config package is validated with the daemons' own
//! validator and built as a .deb that installs into conf.d/; an invalid file builds nothing.
//! (Installing it next to the real package is checked by packaging/deb-check.sh.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn edge_ctl(args: &[&str]) -> std::process::Output {
    Command::new(e2e::binary("edge-ctl").unwrap())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn config_packages_are_validated_then_built_as_debs() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("midwest.toml");
    std::fs::write(
        &good,
        "[providers.coupontools]\nschedule = \"0 */10 * * * *\"\n\n[[offer_rules]]\nprovider = \"convercus\"\nreference = \"EXT-COFFEE-15\"\nrule = { mechanic = { type = \"percentOff\", basisPoints = 1500 }, requirement = { depts = [7] } }\n",
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    let out = edge_ctl(&[
        "config-package",
        "--region",
        "midwest",
        "--version",
        "1.2",
        good.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deb = out_dir.join("edge-coupon-config-midwest_1.2_all.deb");
    assert!(deb.is_file());
    let info = Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .output()
        .unwrap();
    let info = String::from_utf8_lossy(&info.stdout);
    assert!(
        info.contains("Package: edge-coupon-config-midwest"),
        "{info}"
    );
    assert!(info.contains("Version: 1.2"), "{info}");
    assert!(info.contains("Depends: edge-coupon"), "{info}");
    let contents = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&deb)
        .output()
        .unwrap();
    let contents = String::from_utf8_lossy(&contents.stdout);
    let line = contents
        .lines()
        .find(|l| l.ends_with("./etc/edge-coupon/conf.d/50-region-midwest.toml"))
        .unwrap_or_else(|| panic!("{contents}"));
    assert!(
        line.starts_with("-rw-r-----") && line.contains("root/root"),
        "{line}"
    );
    // The file inside is the file given.
    let x = dir.path().join("x");
    assert!(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(&x)
        .status()
        .unwrap()
        .success());
    assert_eq!(
        std::fs::read_to_string(x.join("etc/edge-coupon/conf.d/50-region-midwest.toml")).unwrap(),
        std::fs::read_to_string(&good).unwrap()
    );

    // Invalid: a bad schedule. Refused, naming the key; nothing built.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[providers.koupon]\nschedule = \"every hour\"\n").unwrap();
    let out = edge_ctl(&[
        "config-package",
        "--region",
        "south",
        "--version",
        "1.0",
        bad.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("providers.koupon.schedule"), "{err}");
    assert!(!out_dir
        .join("edge-coupon-config-south_1.0_all.deb")
        .exists());
    // An unknown key is refused too.
    std::fs::write(&bad, "[outbox]\nconcurency = 3\n").unwrap();
    let out = edge_ctl(&[
        "config-package",
        "--region",
        "south",
        "--version",
        "1.0",
        bad.to_str().unwrap(),
        "--output",
        out_dir.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("concurency"));
}

/// A regional fragment need not carry the provider secrets (each store gets them locally):
/// it was refused without them ("set it here or in EDGE_…", which cannot apply to a
/// package). One that carries them is built with a warning naming the keys, and the .deb
/// is readable by its owner only (it was 0644, and is copied from store to store).
#[test]
fn a_config_package_needs_no_secrets_and_one_carrying_them_is_kept_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let package = |region: &str, text: &str| {
        let file = dir.path().join(format!("{region}.toml"));
        std::fs::write(&file, text).unwrap();
        edge_ctl(&[
            "config-package",
            "--region",
            region,
            "--version",
            "1.0",
            file.to_str().unwrap(),
            "--output",
            out_dir.to_str().unwrap(),
        ])
    };
    let out = package(
        "east",
        "[providers.koupon]\nenabled = true\nstore_id = \"S1\"\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).is_empty());
    assert!(out_dir
        .join("edge-coupon-config-east_1.0_all.deb")
        .is_file());
    let out = package(
        "west",
        "[providers.koupon]\nenabled = true\nstore_id = \"S1\"\napi_key = \"k\"\nsecret = \"s3cr3t\"\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(
        warning.contains("providers.koupon.api_key, providers.koupon.secret")
            && !warning.contains("s3cr3t"),
        "{warning}"
    );
    let deb = out_dir.join("edge-coupon-config-west_1.0_all.deb");
    assert_eq!(
        std::fs::metadata(&deb).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

/// `edge-ctl outbox list | head`: a reader that stops reading ends edge-ctl quietly (exit
/// 0, nothing on stderr), as it did not: println! panicked on the broken pipe.
#[test]
fn output_to_a_reader_that_went_away_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(dir.path(), &dir.path().join("store.db"), "");
    e2e::create_database(&config).unwrap();
    for args in [&["outbox", "list"][..], &["status"], &["--json", "status"]] {
        // The reading end is closed before edge-ctl writes anything.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(e2e::binary("edge-ctl").unwrap())
            .arg("--config")
            .arg(&config)
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {:?} {stderr}", out.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

fn edge_ctl_with(config: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(e2e::binary("edge-ctl").unwrap())
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap()
}

/// edge-ctl never creates the store's database: a missing one (services never started, or
/// a mistyped database.path) is an error naming the path and what to do, and leaves
/// nothing behind (it created an empty database, directories included, and showed a
/// healthy-looking store).
#[test]
fn a_missing_database_is_reported_not_created() {
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(dir.path(), &dir.path().join("not/yet/store.db"), "");
    for args in [
        &["status"][..],
        &["sync", "now", "koupon"],
        &["outbox", "list"],
    ] {
        let out = edge_ctl_with(&config, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("no database at") && stderr.contains("database.path"),
            "{args:?}: {stderr}"
        );
    }
    assert!(!dir.path().join("not").exists());
}

/// Store IT runs edge-ctl in a shell without the provider secrets the services get from
/// their own environment (a systemd drop-in): edge-ctl needs only the database, so a
/// configuration without them is enough, while the services still refuse it.
#[test]
fn edge_ctl_works_without_the_provider_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(
        dir.path(),
        &dir.path().join("store.db"),
        "[providers.coupontools]\nenabled = true\nclient_id = \"id\"\n\
         [providers.koupon]\nenabled = true\napi_key = \"key\"\nstore_id = \"S1\"\n\
         [providers.convercus]\nenabled = true\norg = \"o\"\nusername = \"u\"\ninteraction_id = \"i\"\n",
    );
    let check = Command::new(e2e::binary("edge-server").unwrap())
        .arg("--config")
        .arg(&config)
        .arg("check-config")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(!check.status.success());
    // An empty snapshot with the secrets given as the services get them: creates the database.
    let snapshot = dir.path().join("empty.json");
    std::fs::write(&snapshot, "{}").unwrap();
    let import = Command::new(e2e::binary("edge-server").unwrap())
        .arg("--config")
        .arg(&config)
        .arg("import")
        .arg(&snapshot)
        .env("EDGE_PROVIDERS__COUPONTOOLS__CLIENT_SECRET", "s")
        .env("EDGE_PROVIDERS__KOUPON__SECRET", "s")
        .env("EDGE_PROVIDERS__CONVERCUS__PASSWORD", "s")
        .output()
        .unwrap();
    assert!(
        import.status.success(),
        "{}",
        String::from_utf8_lossy(&import.stderr)
    );
    for args in [&["status"][..], &["--json", "status"], &["outbox", "list"]] {
        let out = edge_ctl_with(&config, args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Retrying or discarding an item that does not exist says so (it said "is not
/// dead-lettered"), in text and in `--json`, with exit status 3.
#[test]
fn retrying_an_unknown_item_says_there_is_none() {
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(dir.path(), &dir.path().join("store.db"), "");
    e2e::create_database(&config).unwrap();
    for verb in ["retry", "discard"] {
        let out = edge_ctl_with(&config, &["outbox", verb, "999"]);
        assert_eq!(out.status.code(), Some(3));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("there is no outbox item 999"),
            "{verb}: {stderr}"
        );
        let out = edge_ctl_with(&config, &["--json", "outbox", verb, "999"]);
        assert_eq!(out.status.code(), Some(3));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "there is no outbox item 999");
    }
}

/// What would do nothing is refused, not reported as done: a pull of a provider the
/// configuration does not enable (it said "starts it within a few seconds" and exited 0,
/// while the daemon only logged that there was nothing to pull), and a list filtered by a
/// state or provider that does not exist (it printed an empty list, read as "no dead items").
#[test]
fn commands_that_would_do_nothing_are_refused_not_reported_done() {
    let dir = tempfile::tempdir().unwrap();
    let config = minimal_config(dir.path(), &dir.path().join("store.db"), "");
    e2e::create_database(&config).unwrap();
    let out = edge_ctl_with(&config, &["sync", "now", "koupon"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("koupon is not enabled") && stderr.contains("providers.koupon.enabled"),
        "{stderr}"
    );
    let conn = rusqlite::Connection::open(dir.path().join("store.db")).unwrap();
    let asked: i64 = conn
        .query_row(
            "SELECT count(*) FROM sync_state WHERE requested_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(asked, 0, "nothing asked of the daemon");
    for args in [
        &["outbox", "list", "--state", "dead-lettered"][..],
        &["outbox", "list", "--provider", "kupon"],
    ] {
        let out = edge_ctl_with(&config, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("possible values"), "{args:?}: {stderr}");
    }
    let out = edge_ctl_with(&config, &["outbox", "list", "--state", "dead"]);
    assert!(out.status.success());
}

/// A configuration of one site and one lane user whose database is `db`, plus `extra`,
/// written to `dir/edge-coupon.toml`.
fn minimal_config(dir: &std::path::Path, db: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let config = dir.join("edge-coupon.toml");
    std::fs::write(
        &config,
        format!(
            "[store]\nsites = [\"S\"]\n[[lanes.credentials]]\nusername = \"a\"\npassword = \"b\"\n[database]\npath = \"{}\"\n{extra}",
            db.display()
        ),
    )
    .unwrap();
    config
}
