//! The server side of one HTTP/1.1 request, for the webhook receivers of the notifications tests
//! and the benchmark: read the head and a `content-length` body from a socket.

use std::collections::HashMap;

use tokio::io::AsyncReadExt as _;
use tokio::net::TcpStream;

/// One request as a receiver read it.
#[derive(Debug, Clone, Default)]
pub struct Request {
    /// Headers, lower-case names.
    pub headers: HashMap<String, String>,
    /// The body (lossy UTF-8).
    pub body: String,
}

impl Request {
    /// A header, or `""`.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Reads one request (head, then `content-length` bytes of body); `None` if the peer closed the
/// connection before the head ended or the read failed.
pub async fn read_request(socket: &mut TcpStream) -> Option<Request> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let header_end = loop {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..read]);
        if let Some(position) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break position;
        }
    };
    let head = String::from_utf8_lossy(&buffer[..header_end]).into_owned();
    let headers: HashMap<String, String> = head
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_lowercase(), value.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[header_end + 4..].to_vec();
    while body.len() < length {
        let read = socket.read(&mut chunk).await.ok()?;
        if read == 0 {
            break;
        }
        body.extend_from_slice(&chunk[..read]);
    }
    Some(Request {
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}
