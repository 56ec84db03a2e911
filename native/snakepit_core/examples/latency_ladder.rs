//! The latency ladder of one call, without the BEAM: what each layer under
//! `Snakepit.execute/3` costs on this machine, measured in one run.
//!
//! 1. A 64-byte TCP ping-pong between two processes, once where the kernel
//!    places them (on a machine with idle CPUs it wakes the other process on
//!    another CPU), once with both pinned to one CPU. The gap is the price of
//!    waking a thread on another CPU, paid at every hand-off of a call.
//!    Then the same over a Unix socket: what the kernel's TCP stack costs.
//! 2. gRPC `GetVersion` from a Rust (tonic) client to a Snakepit worker: the
//!    transport alone; the worker answers it without entering Python.
//! 3. The bench's `echo` tool through the same client: plus the hand-off to
//!    the worker's Python thread, the GIL and the tool.
//!
//! 2 and 3 run against two workers, one serving TCP and one a Unix socket
//! (the pool's `transport: :unix`).
//!
//! `bench/run.sh` builds and runs it; `bench/report.py` puts it next to the
//! end-to-end figures from Elixir (the rest of the ladder: NIF, pool, BEAM).
//!
//!   cargo run --release -p snakepit_core --example latency_ladder -- OUT.json
//!
//! Needs `mix compile` to have built the extension into `priv/python`, and
//! `bench/python` for the bench adapter. Rounds of each measure alternate, so
//! they share the machine's conditions; figures are medians of round p50s.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use snakepit_core::auth::{generate_token, TOKEN_ENV_VAR};
use snakepit_core::client::{connect, WorkerClient};
use snakepit_core::process::{launch, EventSink, WorkerEvent, WorkerProcess, WorkerSpec};
use snakepit_core::proto::{ExecuteToolRequest, GetVersionRequest};
use tokio::sync::mpsc;

const ROUNDS: usize = 5;
const CALLS_PER_ROUND: usize = 1000;
const PING_BYTES: usize = 64;
const ECHO_ARGS: &[u8] = br#"{"id":42,"name":"snakepit","ok":true,"ratio":0.5,"values":[1,2,3]}"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--pong") {
        pong(args.get(2).map(String::as_str) == Some("unix"));
        return;
    }
    let out = args.get(1).cloned();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let report = runtime.block_on(run());
    println!("{report}");
    if let Some(out) = out {
        std::fs::write(&out, format!("{report}\n")).expect("write the report");
    }
}

/// The child of a ping-pong: echoes fixed-size messages until EOF, over TCP
/// or (`unix`) an abstract Unix socket. Prints its address first.
fn pong(unix: bool) {
    let stream: Box<dyn ReadWrite> = if unix {
        let name = format!("snakepit-ladder-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let listener = UnixListener::bind_addr(&address).expect("bind");
        announce(&name);
        Box::new(listener.accept().expect("accept").0)
    } else {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        announce(&listener.local_addr().expect("address").port().to_string());
        let (stream, _) = listener.accept().expect("accept");
        stream.set_nodelay(true).expect("nodelay");
        Box::new(stream)
    };
    let mut stream = stream;
    let mut buf = [0u8; PING_BYTES];
    while stream.read_exact(&mut buf).is_ok() {
        if stream.write_all(&buf).is_err() {
            return;
        }
    }
}

fn announce(address: &str) {
    println!("{address}");
    std::io::stdout().flush().expect("stdout");
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A ping-pong partner process, connected; `cpu` pins both ends to one CPU.
struct PingPong {
    child: std::process::Child,
    stream: Box<dyn ReadWrite>,
}

impl PingPong {
    fn start(cpu: Option<usize>, unix: bool) -> Self {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        command
            .arg("--pong")
            .arg(if unix { "unix" } else { "tcp" })
            .stdout(Stdio::piped());
        if let Some(cpu) = cpu {
            // The child inherits the mask; this thread keeps it too.
            pin_to(cpu);
        }
        let mut child = command.spawn().expect("spawn the ping-pong partner");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("partner's address");
        let stream: Box<dyn ReadWrite> = if unix {
            let address = SocketAddr::from_abstract_name(line.trim().as_bytes()).expect("name");
            Box::new(UnixStream::connect_addr(&address).expect("connect"))
        } else {
            let port: u16 = line.trim().parse().expect("a port");
            let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
            stream.set_nodelay(true).expect("nodelay");
            Box::new(stream)
        };
        Self { child, stream }
    }

    fn round_trip(&mut self) -> Duration {
        let mut buf = [7u8; PING_BYTES];
        let t = Instant::now();
        self.stream.write_all(&buf).expect("ping");
        self.stream.read_exact(&mut buf).expect("pong");
        t.elapsed()
    }
}

impl Drop for PingPong {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pin_to(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn unpin() {
    // SAFETY: as in `pin_to`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for cpu in 0..cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A bench-adapter worker serving over `transport` (`"tcp"` or `"unix"`).
async fn start_worker(token: &str, transport: &str) -> (WorkerProcess, WorkerClient) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let sink: EventSink = Arc::new(move |event| {
        let _ = tx.send(event);
    });
    let python_path = format!(
        "{}:{}",
        root.join("priv/python").display(),
        root.join("bench/python").display()
    );
    let python = std::env::var("SNAKEPIT_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let spec = WorkerSpec {
        worker_id: "ladder".into(),
        executable: python,
        args: [
            "-m",
            "snakepit_bridge.worker",
            "--adapter",
            "bench_adapter.BenchAdapter",
            "--transport",
            transport,
        ]
        .map(String::from)
        .to_vec(),
        env: vec![
            ("PYTHONPATH".into(), python_path),
            (TOKEN_ENV_VAR.into(), token.to_owned()),
        ],
        cwd: None,
        start_timeout: Duration::from_secs(30),
        output_limits: Default::default(),
    };
    let worker = launch(spec, sink).expect("spawn the worker");
    let address = loop {
        match rx.recv().await.expect("worker event") {
            WorkerEvent::Ready { address } => break address,
            WorkerEvent::StartFailed { message } => panic!("worker failed: {message}"),
            _ => continue,
        }
    };
    (worker, connect(&address, token).await.expect("connect"))
}

fn p50_us(mut times: Vec<Duration>) -> f64 {
    times.sort();
    times[times.len() / 2].as_secs_f64() * 1e6
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// p50s of `CALLS_PER_ROUND` calls of `GetVersion` and of `echo`, alternating.
async fn grpc_round(client: &mut WorkerClient, echo: &ExecuteToolRequest) -> [f64; 2] {
    let mut version_times = Vec::with_capacity(CALLS_PER_ROUND);
    let mut echo_times = Vec::with_capacity(CALLS_PER_ROUND);
    for _ in 0..CALLS_PER_ROUND {
        let t = Instant::now();
        client
            .get_version(GetVersionRequest {})
            .await
            .expect("GetVersion");
        version_times.push(t.elapsed());
        let t = Instant::now();
        client.execute_tool(echo.clone()).await.expect("echo");
        echo_times.push(t.elapsed());
    }
    [p50_us(version_times), p50_us(echo_times)]
}

async fn run() -> String {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut free = PingPong::start(None, false);
    let mut pinned = PingPong::start(Some(0), false);
    unpin();
    let mut unix = PingPong::start(None, true);
    let token = generate_token();
    let (_tcp_worker, mut tcp_client) = start_worker(&token, "tcp").await;
    let (_unix_worker, mut unix_client) = start_worker(&token, "unix").await;
    let echo = ExecuteToolRequest {
        tool_name: "echo".into(),
        arguments_json: ECHO_ARGS.to_vec(),
        ..Default::default()
    };

    let mut rounds: [Vec<f64>; 7] = Default::default();
    for round in 0..=ROUNDS {
        let free_times: Vec<_> = (0..CALLS_PER_ROUND).map(|_| free.round_trip()).collect();
        // Only this thread and the partner run on CPU 0 during the pinned round.
        pin_to(0);
        let pinned_times: Vec<_> = (0..CALLS_PER_ROUND).map(|_| pinned.round_trip()).collect();
        unpin();
        let unix_times: Vec<_> = (0..CALLS_PER_ROUND).map(|_| unix.round_trip()).collect();
        let [tcp_version, tcp_echo] = grpc_round(&mut tcp_client, &echo).await;
        let [unix_version, unix_echo] = grpc_round(&mut unix_client, &echo).await;
        // Round 0 warms up.
        if round > 0 {
            let figures = [
                p50_us(free_times),
                p50_us(pinned_times),
                p50_us(unix_times),
                tcp_version,
                tcp_echo,
                unix_version,
                unix_echo,
            ];
            for (i, figure) in figures.into_iter().enumerate() {
                rounds[i].push(figure);
            }
        }
    }
    let [free, pinned, unix, version, echo, unix_version, unix_echo] = rounds.map(median);
    format!(
        concat!(
            "{{\"cpus\":{},\"rounds\":{},\"calls_per_round\":{},",
            "\"tcp_ping_pong_us\":{:.1},\"tcp_ping_pong_one_cpu_us\":{:.1},",
            "\"unix_ping_pong_us\":{:.1},",
            "\"grpc_get_version_us\":{:.1},\"grpc_echo_us\":{:.1},",
            "\"grpc_unix_get_version_us\":{:.1},\"grpc_unix_echo_us\":{:.1}}}"
        ),
        cpus, ROUNDS, CALLS_PER_ROUND, free, pinned, unix, version, echo, unix_version, unix_echo
    )
}
