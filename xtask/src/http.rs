//! A minimal HTTP/1.1 GET over loopback, used only to poll Synapse's `/versions` endpoint.
//!
//! The probe needs one plain-text request to 127.0.0.1; pulling an HTTP client crate (and its
//! TLS stack) into the xtask build for that would cost more build time than these lines.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// Sends `GET path` to `addr` and returns the status code, or `None` when the server does not
/// answer (connection refused, timeout, garbled response).
pub fn get_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut head = [0u8; 64];
    let read = stream.read(&mut head).ok()?;
    let line = std::str::from_utf8(&head[..read]).ok()?;
    // "HTTP/1.1 200 OK"
    line.split_whitespace().nth(1)?.parse().ok()
}
