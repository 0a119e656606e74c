//! `provider-sim --listen 127.0.0.1:PORT [--seed FILE] [--generate JSON]`: the simulated
//! coupon providers (see `docs/provider-sim.md`; `--generate` takes the body of
//! `POST /__sim/generate`, e.g. `'{"convercus":{"accounts":100000}}'`). Prints the admin address on the first line of stdout, then
//! one `<provider> <base URL>` line per provider; runs until killed.

use e2e::sim::{run, Listeners, State};
use std::io::Write;
use std::net::{SocketAddr, TcpListener};

fn usage() -> ! {
    eprintln!(
        "usage: provider-sim --listen 127.0.0.1:PORT [--seed FILE] [--generate JSON] \
         [--convercus-listen ADDR] [--coupontools-listen ADDR] [--koupon-listen ADDR]"
    );
    std::process::exit(2)
}

fn main() {
    let mut listen: Option<String> = None;
    let mut seed: Option<String> = None;
    let mut generate: Option<String> = None;
    let mut per: [Option<String>; 3] = [None, None, None];
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let slot = match a.as_str() {
            "--listen" => &mut listen,
            "--seed" => &mut seed,
            "--generate" => &mut generate,
            "--convercus-listen" => &mut per[0],
            "--coupontools-listen" => &mut per[1],
            "--koupon-listen" => &mut per[2],
            _ => usage(),
        };
        *slot = Some(args.next().unwrap_or_else(|| usage()));
    }
    let listen = listen.unwrap_or_else(|| usage());
    if let Err(e) = actix_web::rt::System::new().block_on(serve(listen, seed, generate, per)) {
        eprintln!("provider-sim: {e}");
        std::process::exit(1);
    }
}

async fn serve(
    listen: String,
    seed: Option<String>,
    generate: Option<String>,
    per: [Option<String>; 3],
) -> std::io::Result<()> {
    let admin = TcpListener::bind(&listen)?;
    let base: SocketAddr = admin.local_addr()?;
    // Provider ports default to the admin port + 1, + 2, + 3 (or free ports for port 0).
    let mut ls = Vec::new();
    for (i, addr) in per.into_iter().enumerate() {
        let addr = match addr {
            Some(a) => a,
            None if listen.ends_with(":0") => format!("{}:0", base.ip()),
            None => format!("{}:{}", base.ip(), base.port() + 1 + i as u16),
        };
        ls.push(TcpListener::bind(addr)?);
    }
    let mut it = ls.into_iter();
    let (Some(convercus), Some(coupontools), Some(koupon)) = (it.next(), it.next(), it.next())
    else {
        return Err(std::io::Error::other("listeners"));
    };
    let state = actix_web::web::Data::new(State::new());
    if let Some(file) = seed {
        let text = std::fs::read_to_string(&file)?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(std::io::Error::other)?;
        state.data().seed(&v).map_err(std::io::Error::other)?;
    }
    if let Some(spec) = generate {
        let v: serde_json::Value = serde_json::from_str(&spec).map_err(std::io::Error::other)?;
        state.data().generate(&v).map_err(std::io::Error::other)?;
    }
    let running = run(
        Listeners {
            admin,
            convercus,
            coupontools,
            koupon,
        },
        state,
    )
    .await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", running.admin)?;
    writeln!(out, "convercus {}", running.convercus_url())?;
    writeln!(out, "coupontools {}", running.coupontools_url())?;
    writeln!(out, "koupon {}", running.koupon_url())?;
    out.flush()?;
    drop(out);
    std::future::pending::<()>().await;
    Ok(())
}
