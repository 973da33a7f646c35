//! Opens many idle SSE streams (GET with a bearer token) and holds them, for
//! `scripts/bench proxy`. Prints how many were established.
//! Usage: bench_sse_clients ADDR PATH TOKEN COUNT HOLD_SECS

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn open(addr: String, path: String, token: String) -> Option<TcpStream> {
    let mut s = TcpStream::connect(&addr).await.ok()?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nAccept: text/event-stream\r\nMCP-Protocol-Version: 2025-06-18\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut buf))
        .await
        .ok()?
        .ok()?;
    String::from_utf8_lossy(&buf[..n])
        .starts_with("HTTP/1.1 200")
        .then_some(s)
}

#[tokio::main]
async fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let (addr, path, token) = (a[0].clone(), a[1].clone(), a[2].clone());
    let count: usize = a[3].parse().unwrap_or(1000);
    let hold: u64 = a[4].parse().unwrap_or(5);
    let mut streams = Vec::with_capacity(count);
    let mut tasks = Vec::new();
    for chunk in (0..count).collect::<Vec<_>>().chunks(500) {
        for _ in chunk {
            tasks.push(tokio::spawn(open(
                addr.clone(),
                path.clone(),
                token.clone(),
            )));
        }
        for t in tasks.drain(..) {
            if let Ok(Some(s)) = t.await {
                streams.push(s);
            }
        }
    }
    println!("{}", streams.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(streams);
}
