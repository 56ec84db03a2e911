//! A standalone bridge server: a session store served over gRPC, without
//! Elixir (so without Elixir tools). The Python tests run it to exercise the
//! Python bridge client against the real server.
//!
//! ```text
//! SNAKEPIT_TOKEN=... snakepit-bridge [--address 127.0.0.1:0] [--heartbeat-ms N]
//!     [--max-sessions N] [--max-variables N] [--session-ttl-s N]
//! ```
//!
//! Once serving it prints one line, `BRIDGE_READY:<port>`, on stdout (the
//! same handshake as workers, so a test needs no polling). It exits when its
//! stdin reaches EOF, so a test that spawned it with a pipe never leaves it
//! behind, however the test ends; SIGTERM's default action ends it too, as it
//! holds nothing the OS does not clean up.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use snakepit_core::auth::TOKEN_ENV_VAR;
use snakepit_core::bridge::{serve, BridgeConfig, NoPools, NoTools};
use snakepit_core::session::{Store, StoreConfig};

const USAGE: &str = "usage: SNAKEPIT_TOKEN=<token> snakepit-bridge [--address 127.0.0.1:0] \
[--heartbeat-ms N] [--max-sessions N] [--max-variables N] [--session-ttl-s N]";

struct Options {
    address: SocketAddr,
    heartbeat: Option<Duration>,
    store: StoreConfig,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        address: SocketAddr::from(([127, 0, 0, 1], 0)),
        heartbeat: None,
        store: StoreConfig::default(),
    };
    let mut args = args;
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.to_owned());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag} takes a non-negative integer, not {value:?}"))
        };
        match flag.as_str() {
            "--address" => {
                options.address = value
                    .parse()
                    .map_err(|_| format!("--address takes IP:PORT, not {value:?}"))?;
            }
            "--heartbeat-ms" => options.heartbeat = Some(Duration::from_millis(number()?)),
            "--max-sessions" => options.store.max_sessions = number()? as usize,
            "--max-variables" => options.store.max_variables_per_session = number()? as usize,
            "--session-ttl-s" => options.store.default_ttl = Duration::from_secs(number()?),
            _ => return Err(format!("unknown option {flag:?}\n{USAGE}")),
        }
    }
    Ok(options)
}

#[tokio::main]
async fn main() -> ExitCode {
    let token = match std::env::var(TOKEN_ENV_VAR) {
        Ok(token) if !token.is_empty() => token,
        _ => {
            eprintln!(
                "snakepit-bridge: set {TOKEN_ENV_VAR} to the token clients must send\n{USAGE}"
            );
            return ExitCode::from(2);
        }
    };
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) => {
            eprintln!("snakepit-bridge: {message}");
            return ExitCode::from(2);
        }
    };

    let mut config = BridgeConfig::new(token);
    config.address = options.address;
    if let Some(heartbeat) = options.heartbeat {
        config.heartbeat = heartbeat;
    }
    let store = Store::new(options.store);
    let server = match serve(config, store, Arc::new(NoTools), Arc::new(NoPools)).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("snakepit-bridge: {e}");
            return ExitCode::FAILURE;
        }
    };

    // Reading stdin blocks, so it gets its own thread; EOF (or a read error)
    // means whoever started us is gone.
    let (eof_tx, eof_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = [0u8; 1024];
        let mut stdin = std::io::stdin().lock();
        while matches!(stdin.read(&mut sink), Ok(n) if n > 0) {}
        let _ = eof_tx.send(());
    });

    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "BRIDGE_READY:{}", server.address().port())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    drop(stdout);

    let _ = eof_rx.await;
    server.shutdown();
    ExitCode::SUCCESS
}
