//! The store health listener: separate port and credentials, Prometheus `/metrics`, the
//! HTML `/status` page (checked in headless Chromium, as store IT's browser would render
//! it) and `/status.json`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use e2e::{Store, StoreOptions, SITE};
use serde_json::{json, Value};

const ADMIN_PASSWORD: &str = "health-secret";

async fn store_with_admin() -> (Store, u16) {
    let store = Store::start(StoreOptions {
        extra_toml: format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\nusername = \"it\"\npassword = \"{ADMIN_PASSWORD}\"\n"
        ),
        ..StoreOptions::default()
    })
    .await
    .unwrap();
    let port = store.admin_port().unwrap();
    (store, port)
}

/// One dead-lettered item with a reason, one pending, as the sync daemon would leave them.
fn outbox_with_a_dead_letter(store: &Store) {
    store
        .outbox_with_a_dead_letter("Coupontools error 513: Coupon session not found.")
        .unwrap();
    let conn = rusqlite::Connection::open(store.db_path()).unwrap();
    let now = shared::db::now_secs();
    shared::sync::record_success(&conn, "koupon", now - 30, "12 offers").unwrap();
}

/// A coupon committed on two sales: the second is acknowledged and flagged as a conflict.
async fn a_redemption_conflict(store: &Store) {
    for txn in ["C1", "C2"] {
        let (status, r) = store
            .post(
                &format!(
                    "/transaction/commit?site={SITE}&customer=4000000000001&transaction={txn}"
                ),
                &json!({"coupons": ["PCT10"]}),
            )
            .await
            .unwrap();
        assert_eq!(status, 200, "{r}");
    }
}

/// Clearing admin.password is how store IT turns the listener off; it closes at the next
/// restart. Until then it refuses everyone: before, `it:` with an empty password matched
/// the cleared one and showed the store's status.
#[tokio::test]
async fn a_cleared_admin_password_lets_no_one_in_until_the_restart() {
    let (store, port) = store_with_admin().await;
    let status_as = |password: &'static str| {
        let req = store
            .client
            .get(format!("https://127.0.0.1:{port}/status.json"))
            .basic_auth("it", Some(password));
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status_as(ADMIN_PASSWORD).await, 200);
    let text = std::fs::read_to_string(&store.config_path).unwrap();
    std::fs::write(
        &store.config_path,
        text.replace(
            &format!("password = \"{ADMIN_PASSWORD}\""),
            "password = \"\"",
        ),
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !store.log_tail().contains("admin.listen") {
        assert!(std::time::Instant::now() < deadline, "{}", store.log_tail());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(status_as("").await, 401);
    assert_eq!(status_as(ADMIN_PASSWORD).await, 401);
}

/// The request counter's method label is one of a fixed set: a client sending a new
/// method token each time grew `/metrics` (and memory) without bound.
#[tokio::test]
async fn unknown_methods_share_one_metrics_label() {
    let (store, port) = store_with_admin().await;
    for i in 0..5 {
        let method = reqwest::Method::from_bytes(format!("ZZ{i}QQ").as_bytes()).unwrap();
        let _ = store
            .client
            .request(method, store.url("/healthz"))
            .send()
            .await
            .unwrap();
    }
    let metrics = store
        .client
        .get(format!("https://127.0.0.1:{port}/metrics"))
        .basic_auth("it", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains("ZZ0QQ"), "{metrics}");
    assert!(metrics.contains("method=\"other\""), "{metrics}");
}

#[tokio::test]
async fn redemption_conflicts_are_shown_to_store_it() {
    let (store, port) = store_with_admin().await;
    let admin = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let get = |path: &'static str| {
        store
            .client
            .get(admin(path))
            .basic_auth("it", Some(ADMIN_PASSWORD))
            .send()
    };
    let metric = |text: &str| {
        text.lines()
            .find(|l| l.starts_with("edge_redemption_conflicts_30d "))
            .unwrap_or_else(|| panic!("no conflicts gauge in\n{text}"))
            .to_owned()
    };
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text), "edge_redemption_conflicts_30d 0");
    a_redemption_conflict(&store).await;
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert_eq!(metric(&text), "edge_redemption_conflicts_30d 1");
    let v: Value = get("/status.json").await.unwrap().json().await.unwrap();
    assert_eq!(v["conflicts"]["last30Days"], 1, "{v}");
    let c = &v["conflicts"]["recent"][0];
    assert_eq!(
        (&c["transaction"], &c["coupon"], &c["customer"]),
        (&json!("C2"), &json!("PCT10"), &json!("4000000000001")),
        "{v}"
    );
    // And in `edge-ctl status`, text and JSON.
    let edge_ctl = |json: bool| {
        let mut cmd = std::process::Command::new(e2e::binary("edge-ctl").unwrap());
        cmd.arg("--config").arg(&store.config_path);
        if json {
            cmd.arg("--json");
        }
        let out = cmd.arg("status").output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v: Value = serde_json::from_str(&edge_ctl(true)).unwrap();
    assert_eq!(v["conflicts"]["last30Days"], 1, "{v}");
    assert_eq!(v["conflicts"]["recent"][0]["coupon"], "PCT10", "{v}");
    let text = edge_ctl(false);
    assert!(
        text.contains("redemption conflicts in the last 30 days: 1"),
        "{text}"
    );
    assert!(
        text.contains("STO1 C2  customer 4000000000001  coupon PCT10"),
        "{text}"
    );
}

#[tokio::test]
async fn metrics_status_json_and_credentials() {
    let (store, port) = store_with_admin().await;
    outbox_with_a_dead_letter(&store);
    // Some lane traffic to count.
    for _ in 0..3 {
        let (s, _) = store
            .get(&format!(
                "/coupons/customer?site={SITE}&customer=4000000000001"
            ))
            .await
            .unwrap();
        assert_eq!(s, 200);
    }
    let admin = |path: &str| format!("https://127.0.0.1:{port}{path}");
    // Lane credentials do not open the admin listener; no credentials neither.
    let r = store.client.get(admin("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = store
        .client
        .get(admin("/metrics"))
        .basic_auth(e2e::USER, Some(e2e::PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // And the admin credentials do not open the lanes' API.
    let r = store
        .client
        .get(store.url(&format!("/coupons?site={SITE}")))
        .basic_auth("it", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let text = store
        .client
        .get(admin("/metrics"))
        .basic_auth("it", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no `{prefix}` in\n{text}"))
            .to_owned()
    };
    assert!(line(
        "edge_lane_requests_total{endpoint=\"/coupons/customer\",method=\"GET\",status=\"200\"}"
    )
    .ends_with(" 3"));
    assert!(line(
        "edge_lane_request_duration_seconds_bucket{endpoint=\"/coupons/customer\",le=\"+Inf\"}"
    )
    .ends_with(" 3"));
    assert!(line("edge_outbox_items{provider=\"coupontools\",state=\"dead\"}").ends_with(" 1"));
    assert!(line("edge_outbox_items{provider=\"coupontools\",state=\"pending\"}").ends_with(" 1"));
    assert!(line("edge_outbox_dead_letters{provider=\"coupontools\"}").ends_with(" 1"));
    let oldest: f64 = line("edge_outbox_oldest_pending_age_seconds{provider=\"coupontools\"}")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(oldest >= 100.0, "{oldest}");
    let age: f64 = line("edge_provider_last_success_age_seconds{provider=\"koupon\"}")
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!((30.0..100.0).contains(&age), "{age}");

    let v: Value = store
        .client
        .get(admin("/status.json"))
        .basic_auth("it", Some(ADMIN_PASSWORD))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        v["deadLetters"][0]["reason"],
        "Coupontools error 513: Coupon session not found."
    );
    assert_eq!(v["deadLetters"][0]["orderingKey"], "voucher:S1");
}

/// The page as headless Chromium renders it (Debian's `chromium` package).
#[tokio::test]
async fn status_page_renders_in_headless_chromium() {
    let chromium = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|b| {
            std::process::Command::new(b)
                .arg("--version")
                .output()
                .is_ok()
        })
        .expect(
            "headless Chromium is needed for this test: apt-get install chromium (.ci/run does)",
        );
    let (store, port) = store_with_admin().await;
    outbox_with_a_dead_letter(&store);
    a_redemption_conflict(&store).await;
    let profile = store.dir.join("chromium-profile");
    let url = format!("https://it:{ADMIN_PASSWORD}@127.0.0.1:{port}/status");
    let out = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--ignore-certificate-errors",
            "--virtual-time-budget=3000",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .await
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        dom.contains("<table id=\"providers\">"),
        "Chromium did not render the page: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The verdict, per provider, and the dead letter with its reason.
    assert!(dom.contains("id=\"overall\" class=\"attention\""), "{dom}");
    assert!(dom.contains("data-provider=\"coupontools\""), "{dom}");
    assert!(
        dom.contains("Coupontools error 513: Coupon session not found."),
        "{dom}"
    );
    assert!(dom.contains("voucher:S1"), "{dom}");
    // The redemption conflict, with its sale and coupon.
    assert!(
        dom.contains("<p id=\"conflict-count\">1 in the last 30 days"),
        "{dom}"
    );
    assert!(
        dom.contains("<td>C2</td><td>4000000000001</td><td>PCT10</td>"),
        "{dom}"
    );
    // Without credentials the browser gets no page.
    let out = tokio::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--ignore-certificate-errors",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("https://127.0.0.1:{port}/status"))
        .output()
        .await
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("id=\"providers\""));
}
