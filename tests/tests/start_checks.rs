//! What edge-server says when it cannot start as configured: each refusal names what is
//! wrong (the key, the file) and what to do, and `check-config` finds what `serve` would
//! refuse. Found by a black-box review of the operator promises: a database the service
//! could not write started "ready" and answered every sale with 500; an unwritable
//! directory was reported as "stored data is corrupt"; a mismatched TLS key said only
//! `KeyMismatch`; check-config passed a configuration `serve` refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A store directory any user may enter, with a plain-HTTP config (so only the database is
/// at stake) whose database is `db`.
fn store(extra: &str, db: Option<&Path>) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("edge-coupon.toml");
    let db = db.map_or_else(|| dir.path().join("edge.db"), Path::to_path_buf);
    std::fs::write(
        &config,
        format!(
            "[store]\nsites = [\"S\"]\n[[lanes.credentials]]\nusername = \"lane\"\npassword = \"lane-secret\"\n\
             [database]\npath = \"{}\"\n[server]\nlisten = \"127.0.0.1:0\"\nplain_http = true\n{extra}",
            db.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).unwrap();
    (dir, config)
}

fn edge_server(config: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(e2e::binary("edge-server").unwrap());
    c.arg("--config")
        .arg(config)
        .args(args)
        // As in a shell where it is set: an operator's error has no backtrace.
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Runs `cmd`, which must end by itself (a server that starts would serve forever: it is
/// killed after a minute and the test fails).
fn ends(mut cmd: Command) -> Output {
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("still running after 60 s: it should have refused to start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Whether this test runs as root (then another user is simulated with `nobody`, since
/// root may write any file).
fn root(dir: &Path) -> bool {
    let probe = dir.join("uid-probe");
    std::fs::write(&probe, "").unwrap();
    std::fs::metadata(&probe).unwrap().uid() == 0
}

/// `serve` as a user that may not write `not_writable` (root: as nobody; else the path's
/// write permission is taken away).
fn serve_without_write_access(config: &Path, not_writable: &Path, dir: &Path) -> Output {
    let mut cmd = edge_server(config, &["serve"]);
    if root(dir) {
        cmd.uid(65534).gid(65534);
    } else {
        let mode = if not_writable.is_dir() { 0o555 } else { 0o444 };
        std::fs::set_permissions(not_writable, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    ends(cmd)
}

#[test]
fn a_database_the_service_cannot_write_is_refused_at_start() {
    // Whether the -wal and -shm files were left behind by the last writer or not, SQLite
    // fails differently (read-only open, or cannot open): both are said the same way.
    for leftovers in [false, true] {
        let (dir, config) = store("", None);
        e2e::create_database(&config).unwrap();
        let db = dir.path().join("edge.db");
        for suffix in ["-wal", "-shm"] {
            let side = dir.path().join(format!("edge.db{suffix}"));
            if !leftovers {
                let _ = std::fs::remove_file(&side);
            } else if !side.exists() {
                std::fs::write(&side, "").unwrap();
            }
        }
        let out = serve_without_write_access(&config, &db, dir.path());
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains("cannot be written") && err.contains("database.path"),
            "leftovers {leftovers}: {err}"
        );
        assert!(
            !err.contains("corrupt") && !err.contains("backtrace"),
            "{err}"
        );
    }
}

#[test]
fn a_database_directory_the_service_cannot_create_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = tmp.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    // A directory to make inside it, or the database straight in it: EACCES either way
    // (the second said ENOENT, from the fallback open of the lock file it could not create).
    for db in [locked.join("store/edge.db"), locked.join("edge.db")] {
        let (dir, config) = store("", Some(&db));
        let out = serve_without_write_access(&config, &locked, dir.path());
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains("Permission denied") && err.contains("database.path"),
            "{}: {err}",
            db.display()
        );
        assert!(
            !err.contains("corrupt") && !err.contains("No such file"),
            "{err}"
        );
    }
}

#[test]
fn a_file_that_is_no_database_is_named_with_what_to_do() {
    let (dir, config) = store("", None);
    std::fs::write(dir.path().join("edge.db"), vec![b'x'; 8192]).unwrap();
    let out = ends(edge_server(&config, &["serve"]));
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("is not an SQLite database") && err.contains("backup"),
        "{err}"
    );
}

#[test]
fn type_errors_name_the_key_and_the_file() {
    let (_dir, config) = store("workers = \"two\"\n", None);
    for args in [&["check-config"][..], &["serve"]] {
        let out = ends(edge_server(&config, args));
        let err = stderr(&out);
        assert!(!out.status.success());
        assert!(
            err.contains("`server.workers`") && err.contains(&config.display().to_string()),
            "{args:?}: {err}"
        );
        assert!(!err.contains("backtrace"), "{err}");
    }
}

/// Two self-signed pairs made by `tls-init`; returns (cert, key) of each.
fn two_pairs(dir: &Path) -> [(PathBuf, PathBuf); 2] {
    ["a", "b"].map(|name| {
        let cert = dir.join(format!("{name}/cert.pem"));
        let key = dir.join(format!("{name}/key.pem"));
        let (_d, config) = tls_store(&cert, &key, &dir.join("unused.db"));
        let out = ends(edge_server(&config, &["tls-init"]));
        assert!(out.status.success(), "{}", stderr(&out));
        (cert, key)
    })
}

/// [`store`] serving HTTPS with the certificate `cert` and key `key` (made by `tls-init`
/// or at start when missing), its database `db`.
fn tls_store(cert: &Path, key: &Path, db: &Path) -> (tempfile::TempDir, PathBuf) {
    let (d, config) = store(
        &format!(
            "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\nself_signed_local_names = false\n",
            cert.display(),
            key.display()
        ),
        Some(db),
    );
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("plain_http = true", "");
    std::fs::write(&config, text).unwrap();
    (d, config)
}

/// `sudo edge-server tls-init` (renewing the certificate as docs/packaging.md says) made
/// root's files, mode 0640: the service, running as its own user, could not read the key
/// and did not start at its next restart. What root writes goes to the owner of the
/// directory it is written in (here `nobody`, standing for the service user).
#[test]
fn tls_init_run_as_root_leaves_the_files_to_the_owner_of_their_directory() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = tmp.path().join("state");
    std::fs::create_dir(&state).unwrap();
    let as_root = root(tmp.path());
    let service_uid = if as_root {
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        65534
    } else {
        std::fs::metadata(&state).unwrap().uid()
    };
    let (cert, key) = (state.join("tls/cert.pem"), state.join("tls/key.pem"));
    let (_d, config) = tls_store(&cert, &key, &state.join("edge.db"));
    let out = ends(edge_server(&config, &["tls-init"]));
    assert!(out.status.success(), "{}", stderr(&out));
    for p in [&state.join("tls"), &cert, &key] {
        let m = std::fs::metadata(p).unwrap();
        assert_eq!(
            (m.uid(), m.gid() == m.uid() || !as_root),
            (service_uid, true),
            "{}",
            p.display()
        );
    }
    assert_eq!(
        std::fs::metadata(&key).unwrap().mode() & 0o777,
        0o640,
        "the key stays private"
    );
    if as_root {
        // The service user can use them.
        let mut check = edge_server(&config, &["check-config"]);
        check.uid(65534).gid(65534);
        let out = ends(check);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

/// A lane URL without a port means 443; the packaged unit drops every capability, and the
/// server said only "Permission denied".
#[test]
fn a_privileged_port_refused_says_how_to_allow_it() {
    let unprivileged_from: u16 =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1024);
    assert!(
        unprivileged_from > 999,
        "this machine lets any user listen on port 999 (ip_unprivileged_port_start = {unprivileged_from}): the test cannot see a refusal"
    );
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let as_root = root(tmp.path());
    if as_root {
        std::os::unix::fs::chown(&data, Some(65534), Some(65534)).unwrap();
    }
    let (_d, config) = store("", Some(&data.join("edge.db")));
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("127.0.0.1:0", "127.0.0.1:999");
    std::fs::write(&config, text).unwrap();
    let mut cmd = edge_server(&config, &["serve"]);
    if as_root {
        cmd.uid(65534).gid(65534);
    }
    let out = ends(cmd);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot listen on 127.0.0.1:999")
            && err.contains("CAP_NET_BIND_SERVICE")
            && err.contains("systemctl edit edge-server"),
        "{err}"
    );
}

#[test]
fn check_config_finds_what_serve_would_refuse_about_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let [(cert_a, _), (_, key_b)] = two_pairs(tmp.path());
    let tls = |cert: &Path, key: &Path, generate: bool| {
        store(
            &format!(
                "[server.tls]\ncert = \"{}\"\nkey = \"{}\"\ngenerate_self_signed = {generate}\n",
                cert.display(),
                key.display()
            ),
            None,
        )
    };
    let https = |config: &Path| {
        let text = std::fs::read_to_string(config)
            .unwrap()
            .replace("plain_http = true", "");
        std::fs::write(config, text).unwrap();
    };
    // A key of another certificate: both files named, and what to do.
    let (_d1, mismatched) = tls(&cert_a, &key_b, true);
    https(&mismatched);
    for args in [&["check-config"][..], &["serve"]] {
        let out = ends(edge_server(&mismatched, args));
        let err = stderr(&out);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            err.contains("does not belong to the certificate")
                && err.contains(&cert_a.display().to_string())
                && err.contains(&key_b.display().to_string())
                && err.contains("server.tls.key"),
            "{args:?}: {err}"
        );
    }
    // Missing files that may not be generated: check-config refuses as serve does.
    let missing = tmp.path().join("none/cert.pem");
    let (_d2, no_files) = tls(&missing, &tmp.path().join("none/key.pem"), false);
    https(&no_files);
    let out = ends(edge_server(&no_files, &["check-config"]));
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains(&missing.display().to_string())
            && err.contains("generate_self_signed is false"),
        "{err}"
    );
    // Missing files that will be generated: valid, with a note.
    let (_d3, generated) = tls(&missing, &tmp.path().join("none/key.pem"), true);
    https(&generated);
    let out = ends(edge_server(&generated, &["check-config"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("generated at start"));
}

#[test]
fn the_packaged_lane_password_is_warned_about_and_a_user_configured_twice_refused() {
    let (_d, config) = store("", None);
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("lane-secret", "change-me")).unwrap();
    let out = ends(edge_server(&config, &["check-config"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("warning: lanes.credentials") && stdout.contains("change-me"),
        "{stdout}"
    );
    std::fs::write(
        &config,
        format!("{text}\n[[lanes.credentials]]\nusername = \"lane\"\npassword = \"old\"\n"),
    )
    .unwrap();
    let out = ends(edge_server(&config, &["check-config"]));
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("lanes.credentials") && err.contains("`lane`"),
        "{err}"
    );
}
