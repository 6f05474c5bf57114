//! Load generator for `tests/bench/image-serve.sh`: N concurrent HTTP/1.1 GETs of one URL, bodies
//! counted and discarded, so a rack of deploy agents fetching the same image can be imitated
//! with as little client CPU as possible (the client shares the machine with the server): a bare
//! request over a tokio `TcpStream` and one 256 KiB read buffer per connection, no HTTP library.
//!
//! Usage: `http_load URL N [EXPECTED_BYTES]` (URL `http://HOST:PORT/PATH`). Prints one line:
//! `WALL_SECONDS OK_COUNT TOTAL_BYTES`, where OK counts responses with status 200 whose body had
//! EXPECTED_BYTES (or Content-Length, if not given). Failures are listed on stderr.

use std::time::Instant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Per-connection read size: big enough that reads, not syscalls, dominate.
const BUFFER: usize = 256 * 1024;

#[derive(Debug)]
struct Fetched {
    status: u16,
    body: u64,
    content_length: Option<u64>,
}

async fn fetch(host: &str, path: &str) -> std::io::Result<Fetched> {
    let mut stream = TcpStream::connect(host).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut buf = vec![0u8; BUFFER];
    let mut filled = 0;
    // Read until the end of the header block; whatever follows it is the start of the body.
    let head_end = loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
        if let Some(i) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        if filled == buf.len() {
            return Err(std::io::Error::other("response header too large"));
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let content_length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    });
    let mut body = (filled - head_end) as u64;
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        body += n as u64;
    }
    Ok(Fetched {
        status,
        body,
        content_length,
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: http_load http://HOST:PORT/PATH N [EXPECTED_BYTES]";
    let url = args.next().ok_or(usage)?;
    let count: usize = args.next().ok_or(usage)?.parse()?;
    let expected: Option<u64> = args.next().map(|s| s.parse()).transpose()?;
    let rest = url.strip_prefix("http://").ok_or(usage)?;
    let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };

    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..count {
        let (host, path) = (host.to_string(), path.to_string());
        tasks.spawn(async move { fetch(&host, &path).await });
    }
    let (mut ok, mut total) = (0, 0u64);
    while let Some(joined) = tasks.join_next().await {
        match joined? {
            Ok(got) => {
                total += got.body;
                let want = expected.or(got.content_length);
                if got.status == 200 && Some(got.body) == want {
                    ok += 1;
                } else {
                    eprintln!("incomplete: {got:?}, expected {want:?} bytes");
                }
            }
            Err(err) => eprintln!("failed: {err}"),
        }
    }
    println!("{:.3} {ok} {total}", start.elapsed().as_secs_f64());
    Ok(())
}
