#![allow(dead_code)]
//! A tiny HTTP/1.1 test server on 127.0.0.1 whose every response can be
//! scripted: status, body, latency, a stall mid-body, a cut-off body,
//! redirects. Each connection is served on its own thread; the server lives
//! as long as the returned handle.
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to answer one request.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Sleep before answering.
    pub delay: Duration,
    /// Send only this many body bytes (with the full Content-Length) and close.
    pub truncate_at: Option<usize>,
    /// Send half the body, then go silent for this long.
    pub stall: Option<Duration>,
}

impl Reply {
    pub fn ok(body: Vec<u8>) -> Self {
        Reply {
            status: 200,
            body,
            headers: vec![],
            delay: Duration::ZERO,
            truncate_at: None,
            stall: None,
        }
    }
    pub fn status(code: u16) -> Self {
        Reply {
            status: code,
            ..Reply::ok(format!("status {code}").into_bytes())
        }
    }
    pub fn redirect(to: &str) -> Self {
        let mut r = Reply::status(302);
        r.headers.push(("Location".into(), to.into()));
        r
    }
    pub fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

/// A route's replies: one per request in order, the last repeating.
type Script = Vec<Reply>;

pub struct Server {
    pub base: String,
    routes: Arc<Mutex<HashMap<String, (Script, usize)>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let routes: Arc<Mutex<HashMap<String, (Script, usize)>>> = Default::default();
        let hits: Arc<Mutex<HashMap<String, usize>>> = Default::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (r, h, s) = (routes.clone(), hits.clone(), stop.clone());
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (r, h) = (r.clone(), h.clone());
                        std::thread::spawn(move || serve(stream, r, h));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Server {
            base,
            routes,
            hits,
            stop,
        }
    }

    /// Answers `path` with `replies` in order (the last one repeats).
    pub fn route(&self, path: &str, replies: Vec<Reply>) {
        self.routes
            .lock()
            .unwrap()
            .insert(path.to_string(), (replies, 0));
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Requests received for `path`.
    pub fn hits(&self, path: &str) -> usize {
        *self.hits.lock().unwrap().get(path).unwrap_or(&0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    stream: TcpStream,
    routes: Arc<Mutex<HashMap<String, (Script, usize)>>>,
    hits: Arc<Mutex<HashMap<String, usize>>>,
) {
    stream.set_nonblocking(false).ok();
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut range_start: Option<usize> = None;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" || line == "\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("range: bytes=") {
                range_start = v.trim().trim_end_matches('-').parse().ok();
            }
        }
        let path = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        *hits.lock().unwrap().entry(path.clone()).or_default() += 1;
        let reply = {
            let mut map = routes.lock().unwrap();
            match map.get_mut(&path) {
                Some((script, n)) => {
                    let r = script[(*n).min(script.len() - 1)].clone();
                    *n += 1;
                    r
                }
                None => Reply::status(404),
            }
        };
        std::thread::sleep(reply.delay);
        let (status, body) = match range_start {
            Some(s) if reply.status == 200 && s < reply.body.len() => {
                (206, reply.body[s..].to_vec())
            }
            _ => (reply.status, reply.body.clone()),
        };
        let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
        for (k, v) in &reply.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        if stream.write_all(head.as_bytes()).is_err() {
            return;
        }
        if let Some(stall) = reply.stall {
            let half = body.len() / 2;
            let _ = stream.write_all(&body[..half]);
            let _ = stream.flush();
            std::thread::sleep(stall);
            return;
        }
        if let Some(cut) = reply.truncate_at {
            let _ = stream.write_all(&body[..cut.min(body.len())]);
            return; // close early
        }
        if stream.write_all(&body).is_err() {
            return;
        }
    }
}
