//! `switchyard-load`: a load generator that sees what a streaming client sees.
//!
//! wrk times whole responses; a chat client cares about the time to the first body
//! byte and the gaps between chunks, and an operator about how many streams a router
//! holds open at once. Each connection is its own HTTP/1.1 keep-alive connection (as
//! wrk's are), so the figures compare with wrk's.
//!
//! ```text
//! switchyard-load --url http://127.0.0.1:8080/v1/chat/completions
//!                 [--connections 16] [--duration-s 10] [--model mock-model]
//!                 [--stream] [--hold] [--rate N] [--connect-parallelism 256]
//! ```
//!
//! * Load mode (default): every connection sends requests back to back until the
//!   duration is over (a closed loop, like wrk: the proxy runs saturated).
//! * Fixed rate (`--rate N`): the connections together send N requests per second,
//!   evenly spaced and taken in turn (request `k` at `k / N` seconds past the start, on
//!   connection `k mod c`), so latency is measured below saturation: what a proxy adds
//!   to a request, not how long requests queue behind a saturated one. The times come
//!   from a thread of their own sleeping to each one (tokio's timer has a millisecond
//!   grain: at 5,000 requests/s it would send them five at a time, and the fifth would
//!   wait for the proxy to finish the other four). A request whose time has come while
//!   its connection is still busy is sent as soon as it is free; `behind=` counts the
//!   requests sent more than 1 ms after their time (a rate too high for the target, or
//!   a load generator that did not get the CPU in time).
//! * Hold mode (`--hold`, implies `--stream`): every connection sends one streaming
//!   request; once every stream has its first chunk the tool prints `open N` on its own
//!   line (so a script can sample the proxy's memory while they are all open), then
//!   reads every stream to its end.
//!
//! Both end with one line of `key=value` pairs: `requests errors rps`, and for the
//! whole response, the first body chunk and the gaps between chunks, p50 and p99 in
//! milliseconds (`total_p50_ms ttfb_p99_ms gap_p50_ms ...`), then `behind`. Exit
//! status 1 when any request failed.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command-line tool reports on stdio"
)]

use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore};

const USAGE: &str = "usage: switchyard-load --url URL [--connections N] [--duration-s N] \
[--model NAME] [--stream] [--hold] [--rate N] [--connect-parallelism N]";

/// Command-line settings.
#[derive(Clone, Debug)]
struct Args {
    /// The chat completions URL to load (`http://` only).
    url: Uri,
    /// Concurrent connections (default 16).
    connections: usize,
    /// How long rate mode runs (default 10 s).
    duration: Duration,
    /// The model named in requests (default `mock-model`).
    model: String,
    /// Ask for streamed answers.
    stream: bool,
    /// Hold mode: one streaming request per connection, all open at once.
    hold: bool,
    /// Connections being opened at the same time (default 256), so a burst of
    /// thousands does not overflow the listener's accept backlog.
    connect_parallelism: usize,
    /// Fixed rate: requests per second over all connections (`None`: back to back).
    rate: Option<u64>,
}

/// What one connection saw.
#[derive(Default)]
struct Samples {
    requests: u64,
    errors: u64,
    /// Fixed rate: requests sent more than 1 ms after their time (the connection was
    /// busy, or this process was not running).
    behind: u64,
    /// Whole responses, microseconds.
    total: Vec<u32>,
    /// Time to the first body chunk, microseconds.
    ttfb: Vec<u32>,
    /// Gaps between body chunks, microseconds.
    gaps: Vec<u32>,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.behind += other.behind;
        self.total.extend(other.total);
        self.ttfb.extend(other.ttfb);
        self.gaps.extend(other.gaps);
    }
}

/// Shared by the connections of a hold run.
#[derive(Default)]
struct Hold {
    first_chunks: AtomicUsize,
    all_open: Notify,
    release: Notify,
}

fn main() {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("{message}\n{USAGE}");
            std::process::exit(64);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build();
    let stream = args.stream;
    let result = runtime.map_err(|e| e.to_string()).and_then(|rt| rt.block_on(run(args)));
    match result {
        Ok(summary) => {
            println!("{}", summary.line);
            if stream && summary.first_chunks > 0 && summary.gaps == 0 {
                eprintln!("switchyard-load: every stream arrived in one chunk: something buffers");
            }
            if summary.errors > 0 || summary.requests == 0 {
                std::process::exit(1);
            }
        }
        Err(message) => {
            eprintln!("switchyard-load: {message}");
            std::process::exit(1);
        }
    }
}

/// What a run measured.
struct Summary {
    requests: u64,
    errors: u64,
    /// Streams that had their first chunk (and, in hold mode, were open at once).
    first_chunks: usize,
    gaps: usize,
    /// The `key=value` line printed at the end.
    line: String,
}

/// Run the load.
async fn run(args: Args) -> Result<Summary, String> {
    let authority = args.url.authority().ok_or("--url needs a host and port")?.clone();
    if args.url.scheme_str() != Some("http") {
        return Err("--url must be http://".to_owned());
    }
    let body = Bytes::from(request_body(&args.model, args.stream));
    let args = Arc::new(args);
    let connect = Arc::new(Semaphore::new(args.connect_parallelism.max(1)));
    let hold = Arc::new(Hold::default());
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut schedules = match args.rate {
        Some(rate) => {
            let pacer = Pacer { rate, connections: args.connections };
            pacer.spawn(args.duration)?.into_iter().map(Some).collect()
        }
        None => Vec::new(),
    };
    schedules.resize_with(args.connections, || None);
    let mut tasks = Vec::with_capacity(args.connections);
    for schedule in schedules {
        let (args, body, connect, hold) =
            (Arc::clone(&args), body.clone(), Arc::clone(&connect), Arc::clone(&hold));
        let authority = authority.to_string();
        tasks.push(tokio::spawn(async move {
            connection(&args, &authority, body, &connect, &hold, deadline, schedule).await
        }));
    }
    if args.hold {
        let opened = tokio::time::timeout(Duration::from_secs(120), hold.all_open.notified()).await;
        let open = hold.first_chunks.load(Ordering::Acquire);
        println!("open {open}");
        let _ = std::io::stdout().flush();
        if opened.is_err() {
            eprintln!("switchyard-load: only {open} of {} streams opened", args.connections);
        }
        hold.release.notify_waiters();
    }
    let mut all = Samples::default();
    for task in tasks {
        match task.await {
            Ok(samples) => all.merge(samples),
            Err(e) => return Err(format!("a connection task failed: {e}")),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    #[allow(clippy::cast_precision_loss, reason = "a request count fits an f64")]
    let rps = all.requests as f64 / elapsed.max(1e-9);
    let (first_chunks, gaps) = (all.ttfb.len(), all.gaps.len());
    let line = format!(
        "requests={} errors={} rps={rps:.0} total_p50_ms={} total_p99_ms={} ttfb_p50_ms={} \
         ttfb_p99_ms={} gap_p50_ms={} gap_p99_ms={} behind={}",
        all.requests,
        all.errors,
        percentile_ms(&mut all.total, 50.0),
        percentile_ms(&mut all.total, 99.0),
        percentile_ms(&mut all.ttfb, 50.0),
        percentile_ms(&mut all.ttfb, 99.0),
        percentile_ms(&mut all.gaps, 50.0),
        percentile_ms(&mut all.gaps, 99.0),
        all.behind,
    );
    Ok(Summary { requests: all.requests, errors: all.errors, first_chunks, gaps, line })
}

/// Fixed rate: when each request is due and which connection sends it.
#[derive(Clone, Copy, Debug)]
struct Pacer {
    /// Requests per second over all connections.
    rate: u64,
    connections: usize,
}

impl Pacer {
    /// Request `k` of a run started at `start`: the connection that sends it and when,
    /// `k / rate` seconds past the start (computed from `k`, so the times do not drift).
    fn due(&self, start: Instant, k: u64) -> (usize, Instant) {
        let nanos = u128::from(k) * 1_000_000_000 / u128::from(self.rate.max(1));
        let at = Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        let connections = self.connections.max(1) as u64;
        (usize::try_from(k % connections).unwrap_or(0), start + at)
    }

    /// Start the thread that hands each connection its request times. It waits until
    /// every connection has said it is open (or failed to open), so connecting takes
    /// no request's time, then for `duration` sleeps to each time and sends it; the
    /// schedules close after the last.
    fn spawn(self, duration: Duration) -> Result<Vec<Schedule>, String> {
        let (opened, ready) = std::sync::mpsc::channel();
        let (senders, schedules): (Vec<_>, Vec<_>) = (0..self.connections)
            .map(|_| {
                let (sender, times) = tokio::sync::mpsc::unbounded_channel();
                (sender, Schedule { opened: Some(opened.clone()), times })
            })
            .unzip();
        drop(opened);
        std::thread::Builder::new()
            .name("pacer".to_owned())
            .spawn(move || {
                // Ends early only if every connection is gone.
                for _ in 0..self.connections {
                    if ready.recv().is_err() {
                        break;
                    }
                }
                let start = Instant::now();
                for k in 0.. {
                    let (index, due) = self.due(start, k);
                    if due >= start + duration {
                        break;
                    }
                    let now = Instant::now();
                    if due > now {
                        std::thread::sleep(due - now);
                    }
                    // A connection that failed has dropped its schedule.
                    let _ = senders[index].send(due);
                }
            })
            .map_err(|e| format!("cannot start the pacing thread: {e}"))?;
        Ok(schedules)
    }
}

/// One connection's part of a fixed rate.
struct Schedule {
    /// Told once the connection is open or has failed to open (then dropped).
    opened: Option<std::sync::mpsc::Sender<()>>,
    /// The times its requests are due.
    times: tokio::sync::mpsc::UnboundedReceiver<Instant>,
}

/// One connection: requests back to back until the deadline (or on its schedule until
/// it ends), or
/// one, held.
async fn connection(
    args: &Args,
    authority: &str,
    body: Bytes,
    connect: &Semaphore,
    hold: &Hold,
    deadline: Instant,
    mut schedule: Option<Schedule>,
) -> Samples {
    let mut samples = Samples::default();
    let sender = {
        let Ok(_permit) = connect.acquire().await else { return samples };
        open(authority).await
    };
    if let Some(opened) = schedule.as_mut().and_then(|s| s.opened.take()) {
        let _ = opened.send(());
    }
    let mut sender = match sender {
        Ok(sender) => sender,
        Err(message) => {
            eprintln!("switchyard-load: {message}");
            samples.errors += 1;
            if args.hold {
                count_open(args, hold);
            }
            return samples;
        }
    };
    loop {
        let request = Request::builder()
            .method(Method::POST)
            .uri(args.url.path())
            .header(header::HOST, authority)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(body.clone()));
        let Ok(request) = request else {
            samples.errors += 1;
            return samples;
        };
        if let Some(schedule) = schedule.as_mut() {
            let Some(due) = schedule.times.recv().await else { return samples };
            if Instant::now() > due + Duration::from_millis(1) {
                samples.behind += 1;
            }
        }
        // A server may end a keep-alive connection after a response (nginx does after
        // 1,000 requests by default): open another, as wrk does.
        if sender.ready().await.is_err() {
            match open(authority).await {
                Ok(fresh) => sender = fresh,
                Err(message) => {
                    eprintln!("switchyard-load: {message}");
                    samples.errors += 1;
                    return samples;
                }
            }
        }
        // Timed from the moment it is sent, not from when it was due: the hand-over from
        // the pacing thread takes a few microseconds of its own.
        let sent = Instant::now();
        let ok = exchange(&mut sender, request, sent, args, hold, &mut samples).await;
        samples.requests += 1;
        if ok {
            samples.total.push(micros(sent.elapsed()));
        } else {
            samples.errors += 1;
        }
        // At a fixed rate the schedule ends the run.
        let over = schedule.is_none() && Instant::now() >= deadline;
        if args.hold || !ok || over {
            return samples;
        }
    }
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open(authority: &str) -> Result<Sender, String> {
    let stream =
        TcpStream::connect(authority).await.map_err(|e| format!("connect {authority}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    Ok(sender)
}

/// Send one request and read its body, recording the chunk timings; `false` on any
/// failure (transport error, a status other than 200).
async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
    sent: Instant,
    args: &Args,
    hold: &Hold,
    samples: &mut Samples,
) -> bool {
    let mut first = true;
    let ok = async {
        sender.ready().await.ok()?;
        let response = sender.send_request(request).await.ok()?;
        if response.status() != StatusCode::OK {
            return None;
        }
        let mut body = response.into_body();
        let mut last = sent;
        while let Some(frame) = body.frame().await {
            let frame = frame.ok()?;
            if frame.data_ref().is_none_or(Bytes::is_empty) {
                continue;
            }
            let now = Instant::now();
            if first {
                first = false;
                samples.ttfb.push(micros(now - sent));
                if args.hold {
                    // Every stream stays open until all of them are.
                    let released = hold.release.notified();
                    count_open(args, hold);
                    released.await;
                }
            } else {
                samples.gaps.push(micros(now - last));
            }
            last = Instant::now();
        }
        Some(())
    }
    .await
    .is_some();
    if first && args.hold {
        // Failed before its first chunk: count it, so the others are not held forever.
        count_open(args, hold);
    }
    ok
}

fn count_open(args: &Args, hold: &Hold) {
    if hold.first_chunks.fetch_add(1, Ordering::AcqRel) + 1 == args.connections {
        hold.all_open.notify_one();
    }
}

fn request_body(model: &str, stream: bool) -> Vec<u8> {
    serde_json::json!({
        "model": model,
        "messages": [{"role": "user", "content": "Hello"}],
        "max_tokens": 16,
        "stream": stream,
    })
    .to_string()
    .into_bytes()
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The `p`th percentile (nearest rank) of microsecond samples, in milliseconds with
/// three decimals; `n/a` without samples.
fn percentile_ms(samples: &mut [u32], p: f64) -> String {
    if samples.is_empty() {
        return "n/a".to_owned();
    }
    samples.sort_unstable();
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        reason = "a rank within the sample count"
    )]
    let rank = ((p / 100.0 * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    format!("{:.3}", f64::from(samples[rank - 1]) / 1000.0)
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut url = None;
    let mut args = Args {
        url: Uri::from_static("http://127.0.0.1/"),
        connections: 16,
        duration: Duration::from_secs(10),
        model: switchyard_test_support::DEFAULT_MODEL.to_owned(),
        stream: false,
        hold: false,
        connect_parallelism: 256,
        rate: None,
    };
    while let Some(flag) = argv.next() {
        match flag.as_str() {
            "--help" | "-h" => return Err("switchyard-load: a streaming load generator".to_owned()),
            "--stream" => {
                args.stream = true;
                continue;
            }
            "--hold" => {
                args.hold = true;
                args.stream = true;
                continue;
            }
            _ => {}
        }
        let value = argv.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--url" => url = Some(value.parse::<Uri>().map_err(|e| format!("{flag}: {e}"))?),
            "--connections" => args.connections = number(&value)? as usize,
            "--duration-s" => args.duration = Duration::from_secs(number(&value)?),
            "--model" => args.model = value,
            "--connect-parallelism" => args.connect_parallelism = number(&value)? as usize,
            "--rate" => match number(&value)? {
                0 => return Err("--rate must be at least 1".to_owned()),
                rate => args.rate = Some(rate),
            },
            other => return Err(format!("unknown flag {other}")),
        }
    }
    args.url = url.ok_or("--url is required")?;
    if args.hold && args.rate.is_some() {
        return Err(
            "--rate and --hold do not mix (hold sends one request per connection)".to_owned()
        );
    }
    if args.connections == 0 {
        return Err("--connections must be at least 1".to_owned());
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Args, String> {
        parse_args(list.iter().map(|s| (*s).to_owned()))
    }

    #[test]
    fn flags_parse_and_bad_flags_are_named() {
        let a = args(&["--url", "http://127.0.0.1:9/v1/chat/completions", "--hold"]).unwrap();
        assert!(a.hold && a.stream);
        assert_eq!(a.url.path(), "/v1/chat/completions");
        assert_eq!(a.connections, 16);
        let a = args(&["--url", "http://h:1/", "--connections", "3", "--duration-s", "2"]).unwrap();
        assert_eq!((a.connections, a.duration, a.stream), (3, Duration::from_secs(2), false));
        assert!(args(&[]).unwrap_err().contains("--url is required"));
        assert!(args(&["--url", "http://h:1/", "--bogus", "1"]).unwrap_err().contains("--bogus"));
        assert!(
            args(&["--url", "http://h:1/", "--connections", "0"])
                .unwrap_err()
                .contains("at least 1")
        );
        assert!(
            args(&["--url", "http://h:1/", "--connections"]).unwrap_err().contains("needs a value")
        );
    }

    #[test]
    fn a_fixed_rate_takes_the_connections_in_turn_evenly_spaced() {
        let start = Instant::now();
        let pacer = Pacer { rate: 1000, connections: 4 };
        let ms = Duration::from_millis;
        assert_eq!(pacer.due(start, 0), (0, start));
        assert_eq!(pacer.due(start, 3), (3, start + ms(3)));
        assert_eq!(pacer.due(start, 4), (0, start + ms(4)));
        assert_eq!(pacer.due(start, 4001), (1, start + ms(4001)));
        let third = Pacer { rate: 3, connections: 1 };
        assert_eq!(third.due(start, 1).1, start + Duration::from_nanos(333_333_333));
        assert_eq!(third.due(start, 3).1, start + Duration::from_secs(1), "no drift");
        assert!(args(&["--url", "http://h:1/", "--rate", "0"]).unwrap_err().contains("at least 1"));
        assert!(
            args(&["--url", "http://h:1/", "--rate", "5", "--hold"]).unwrap_err().contains("mix")
        );
        assert_eq!(args(&["--url", "http://h:1/", "--rate", "500"]).unwrap().rate, Some(500));
    }

    /// The pacing thread starts once every connection is open, then hands each its own
    /// times, in order, none before it is due, and closes the schedules after the last.
    #[test]
    fn the_pacer_hands_out_each_time_once_it_has_come() {
        let mut schedules = Pacer { rate: 1000, connections: 3 }.spawn(ms(10)).unwrap();
        let opened = Instant::now();
        std::thread::sleep(ms(5));
        assert!(schedules[0].times.try_recv().is_err(), "nothing before all are open");
        for schedule in &mut schedules {
            schedule.opened.take().unwrap().send(()).unwrap();
        }
        let mut all = Vec::new();
        for schedule in &mut schedules {
            let mut times = Vec::new();
            while let Some(due) = schedule.times.blocking_recv() {
                assert!(Instant::now() >= due, "handed out before its time");
                times.push(due);
            }
            all.push(times);
        }
        let start = all[0][0];
        assert!(start >= opened + ms(5));
        for (index, times) in all.iter().enumerate() {
            let expected: Vec<Instant> =
                (0..10).filter(|k| k % 3 == index).map(|k| start + ms(k as u64)).collect();
            assert_eq!(times, &expected, "connection {index}");
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let mut samples: Vec<u32> = (1..=100).map(|ms| ms * 1000).collect();
        assert_eq!(percentile_ms(&mut samples, 50.0), "50.000");
        assert_eq!(percentile_ms(&mut samples, 99.0), "99.000");
        assert_eq!(percentile_ms(&mut [1500], 99.0), "1.500");
        assert_eq!(percentile_ms(&mut [], 50.0), "n/a");
    }

    /// A request sent more than 1 ms after its time counts as behind; one sent on time
    /// does not, however long it then takes.
    #[tokio::test]
    async fn late_requests_are_counted_as_behind() {
        let mock =
            switchyard_test_support::MockUpstream::start(switchyard_test_support::Script::ok())
                .await
                .unwrap();
        let url = format!("{}/v1/chat/completions", mock.url());
        let args = args(&["--url", &url, "--rate", "1"]).unwrap();
        let authority = args.url.authority().unwrap().to_string();
        let hold = Hold::default();
        let (tx, times) = tokio::sync::mpsc::unbounded_channel();
        let now = Instant::now();
        tx.send(now.checked_sub(ms(5)).unwrap()).unwrap();
        tx.send(now + Duration::from_secs(3600)).unwrap();
        drop(tx);
        let samples = connection(
            &args,
            &authority,
            Bytes::from(request_body(&args.model, false)),
            &Semaphore::new(1),
            &hold,
            now,
            Some(Schedule { opened: None, times }),
        )
        .await;
        assert_eq!((samples.requests, samples.errors, samples.behind), (2, 0, 1));
    }

    /// Rate and hold mode against the in-process mock, streaming with chunk gaps.
    #[tokio::test]
    async fn measures_first_chunks_gaps_and_holds_streams_open() {
        let mock = switchyard_test_support::MockUpstream::start(
            switchyard_test_support::Script::ok().chunks(3),
        )
        .await
        .unwrap();
        let url = format!("{}/v1/chat/completions", mock.url());
        let mut rate =
            args(&["--url", &url, "--connections", "2", "--duration-s", "0", "--stream"]).unwrap();
        rate.duration = Duration::from_millis(200);
        let summary = run(rate).await.unwrap();
        assert_eq!(summary.errors, 0);
        assert!(summary.requests >= 2, "back to back on both connections: {}", summary.line);
        assert_eq!(summary.first_chunks as u64, summary.requests);
        // The mock sends a role chunk, three content chunks, a finish chunk and [DONE].
        assert!(summary.gaps as u64 >= 3 * summary.requests, "{}", summary.line);
        assert!(summary.line.starts_with(&format!("requests={} errors=0 rps=", summary.requests)));
        assert!(!summary.line.contains("n/a"), "{}", summary.line);

        let hold = args(&["--url", &url, "--connections", "20", "--hold"]).unwrap();
        let summary = run(hold).await.unwrap();
        assert_eq!((summary.requests, summary.errors, summary.first_chunks), (20, 0, 20));

        // A fixed rate: 2 connections at 50 requests/s for 200 ms send about 10.
        let mut fixed =
            args(&["--url", &url, "--connections", "2", "--duration-s", "0", "--rate", "50"])
                .unwrap();
        fixed.duration = Duration::from_millis(200);
        let summary = run(fixed).await.unwrap();
        assert_eq!(summary.errors, 0, "{}", summary.line);
        assert!((8..=11).contains(&summary.requests), "{}", summary.line);
        // How many were late depends on this machine's load (the tests share its cores):
        // that they are counted, and only those, is `late_requests_are_counted_as_behind`.
        let behind = summary.line.rsplit_once(" behind=").map(|(_, n)| n.parse::<u64>());
        assert!(matches!(behind, Some(Ok(n)) if n <= summary.requests), "{}", summary.line);

        let refused = args(&["--url", "http://127.0.0.1:1/v1/chat/completions"]).unwrap();
        let summary = run(refused).await.unwrap();
        assert_eq!((summary.requests, summary.errors), (0, 16), "a refused connection fails");
        assert!(summary.line.contains("ttfb_p50_ms=n/a"));
    }
}
