//! The demo: starts the store stack on this machine with embedded defaults (database and a
//! self-signed certificate under ./demo-data, the sample catalog and customers, and the
//! simulated Convercus, Coupontools and Koupon providers with their sample data), then plays
//! one lane: card scan → transient update → total (update) → commit, prints what was
//! applied and queued, starts the sync daemon and shows what reached the providers. Keeps serving until Ctrl-C unless `--once`.

use anyhow::Result;
use e2e::stack::{Daemon, Providers};
use e2e::{Store, StoreOptions, SITE};
use serde_json::{json, Value};

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(other) = args.iter().find(|a| *a != "--once") {
        let help = other == "--help" || other == "-h";
        println!(
            "{}usage: demo [--once]\n\nStarts the store stack on this machine (database and certificate under ./demo-data,\nsimulated providers with sample data), plays one lane sale, shows what reached the\nproviders, and keeps serving until Ctrl-C; --once stops after the sale.",
            if help { String::new() } else { format!("unknown argument `{other}`\n") }
        );
        if help {
            return Ok(());
        }
        std::process::exit(2);
    }
    let once = args.iter().any(|a| a == "--once");
    let dir = std::env::current_dir()?.join("demo-data");
    let port = if std::net::TcpListener::bind("127.0.0.1:8443").is_ok() {
        8443
    } else {
        e2e::free_port()?
    };
    println!(
        "== starting the store stack in {} (port {port})",
        dir.display()
    );
    let mut providers = Providers::start()?;
    println!("   simulated Convercus   {}", providers.convercus_url);
    println!("   simulated Coupontools {}", providers.coupontools_url);
    println!("   simulated Koupon      {}", providers.koupon_url);
    println!(
        "   simulator admin (seed, faults, ledger) http://{}/__sim/",
        providers.admin
    );
    // A fresh run each time: the simulator starts empty-handed, so must the store.
    let _ = std::fs::remove_dir_all(&dir);
    let mut store = Store::in_dir(
        &dir,
        StoreOptions {
            port: Some(port),
            // Pull every provider at start-up-ish (every 2 minutes) from the simulator.
            extra_toml: format!(
                "{}\n[outbox]\npoll_ms = 100\n",
                providers.config_toml("0 */2 * * * *")
            ),
            ..StoreOptions::default()
        },
        true,
    )?;
    store.launch().await?;
    println!("   edge-server is up: {}", store.url("/"));
    println!(
        "   lanes use basic auth {}:{} and trust {}",
        e2e::USER,
        e2e::PASSWORD,
        dir.join("tls/cert.pem").display()
    );

    let customer = "4000000000001";
    let txn = format!(
        "DEMO-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs()
    );
    let q = format!("?site={SITE}&customer={customer}&transaction={txn}");

    let (_, catalog) = store.get(&format!("/coupons?site={SITE}")).await?;
    println!(
        "\n== catalog: {} coupons",
        catalog["coupons"].as_array().map_or(0, Vec::len)
    );
    let (_, meta) = store
        .get(&format!(
            "/coupons/customer?site={SITE}&customer={customer}"
        ))
        .await?;
    println!("== card scanned, customer {customer}: {meta}");
    let (_, clip) = store
        .post(
            &format!("/coupons/customer?site={SITE}&customer={customer}"),
            &json!({"add": ["FIX99"]}),
        )
        .await?;
    println!("== clipped FIX99: {clip}");

    let items = json!([
        {"id": 1, "quantity": 2, "upc": 894773001193u64, "price": 12.99, "discountPrice": 12.99, "dept": 2},
        {"id": 2, "quantity": 1, "upc": 12000001000u64, "price": 1.99, "discountPrice": 1.49, "dept": 1},
        {"id": 3, "quantity": 1.25, "upc": 4011, "price": 1.29, "discountPrice": 1.29, "dept": 5},
        {"id": 4, "quantity": 1, "upc": 38000012345u64, "price": 4.49, "discountPrice": 4.49, "dept": 4},
        {"id": 5, "quantity": 1, "upc": 99887766, "price": 8.99, "discountPrice": 8.99, "dept": 7}
    ]);
    let body = |transient: bool| {
        json!({"site": SITE, "customer": customer, "transaction": txn, "cashier": 7, "terminal": 3,
        "time": "2026-11-22T10:15:30", "transientRequest": transient, "items": items, "subTotal": 43.24, "taxTotal": 2.1, "grossTotal": 45.34})
    };
    let (_, preview) = store.post(&format!("/transaction{q}"), &body(true)).await?;
    println!(
        "\n== transient update (preview, no holds): {} coupons would apply",
        preview["applied"].as_array().map_or(0, Vec::len)
    );
    let (_, update) = store
        .post(&format!("/transaction{q}"), &body(false))
        .await?;
    println!("== total pressed, non-transient update applied:");
    print_applied(&update);
    let (_, meta) = store
        .get(&format!(
            "/coupons/customer?site={SITE}&customer={customer}"
        ))
        .await?;
    println!("   pending on this sale now: {}", meta["pending"]);

    let (_, commit) = store
        .post(
            &format!("/transaction/commit{q}"),
            &json!({"site": SITE, "customer": customer, "transaction": txn,
        "coupons": [], "tenders": [{"type": "CASH", "amount": 40.00}]}),
        )
        .await?;
    println!(
        "\n== commit (empty list: every pending coupon except optional points coupons): {commit}"
    );

    let conn = rusqlite_free_read(&store)?;
    println!("\n== queued for upstream (outbox):");
    for item in conn {
        println!(
            "   #{} {} {} key={} state={}",
            item.id, item.provider, item.operation, item.ordering_key, item.state
        );
    }

    println!("\n== starting sync-daemon: it delivers the outbox to the providers");
    let mut daemon = Daemon::start(&store.config_path, &dir.join("sync-daemon.log"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let items = rusqlite_free_read(&store)?;
        if items
            .iter()
            .all(|i| i.state != "pending" && i.state != "inflight")
        {
            for item in items {
                println!(
                    "   #{} {} {} -> {}{}",
                    item.id,
                    item.provider,
                    item.operation,
                    item.state,
                    item.last_error
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
            }
            break;
        }
        if std::time::Instant::now() > deadline {
            println!(
                "   not all delivered within 30 s; see {}",
                dir.join("sync-daemon.log").display()
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    println!("\n== what the simulated providers received (their ledger):");
    for e in providers.ledger().await? {
        println!(
            "   {} {} {} -> {} {}",
            e["provider"].as_str().unwrap_or(""),
            e["operation"].as_str().unwrap_or(""),
            e["key"].as_str().unwrap_or(""),
            e["status"],
            e["outcome"].as_str().unwrap_or("")
        );
    }
    println!(
        "\n   operator view: ./target/release/edge-ctl --config {} status",
        store.config_path.display()
    );
    if once {
        let _ = daemon.terminate(std::time::Duration::from_secs(15));
        providers.stop();
        return Ok(());
    }
    println!(
        "\nThe store keeps serving on {}; press Ctrl-C to stop.",
        store.url("/")
    );
    stop_asked().await?;
    let _ = daemon.terminate(std::time::Duration::from_secs(15));
    store.kill9();
    providers.stop();
    Ok(())
}

/// Ctrl-C, SIGTERM (`kill`, `timeout`) or SIGHUP (the terminal closed): the stack it
/// started is stopped in each case, not left serving without the demo.
async fn stop_asked() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
        _ = hangup.recv() => Ok(()),
    }
}

fn print_applied(update: &Value) {
    for a in update["applied"].as_array().into_iter().flatten() {
        println!(
            "   {:<6} {:<20} -{} on lines {}{}",
            a["couponId"].as_str().unwrap_or(""),
            a["receiptAlias"].as_str().unwrap_or(""),
            a["totalDiscount"],
            a["items"]
                .as_array()
                .map(|v| v
                    .iter()
                    .map(|i| i["lineId"].to_string())
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            if a.get("optional").is_some() {
                "  (optional: cashier prompts for points)"
            } else {
                ""
            }
        );
    }
    println!("   receipt: {}", update["receiptLines"]);
}

fn rusqlite_free_read(store: &Store) -> Result<Vec<shared::outbox::Item>> {
    let cfg = shared::config::DatabaseConfig {
        path: store.db_path(),
        ..Default::default()
    };
    let pool = shared::db::read_pool(&cfg)?;
    let conn = pool.get()?;
    Ok(shared::outbox::list(&conn, None)?)
}
