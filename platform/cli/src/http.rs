//! A minimal HTTP/1.1 client for the broker's admin API (`/health`, `/v1/transforms`), so the CLI
//! needs no HTTP client dependency. Plain `http://` only, bounded in time and size.

use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::exit::Unreachable;
use sluice_client::wire::CONNECT_TIMEOUT;

/// Largest admin response read (a transform's status with its log lines is a few KiB).
const RESPONSE_BYTES_MAX: u64 = 1024 * 1024;
/// The whole exchange after connecting.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);

/// GETs `path` from the admin API at `base` (`http://host:port`) and returns (status, body).
pub(crate) async fn get(base: &str, path: &str) -> Result<(u16, String)> {
    request(base, "GET", path, None, RESPONSE_TIMEOUT).await
}

/// Sends `method path` with an optional JSON body to the admin API at `base` and returns (status,
/// body). `timeout` bounds the exchange after connecting (deploying a transform compiles it).
pub(crate) async fn request(base: &str, method: &str, path: &str, json_body: Option<&[u8]>, timeout: Duration) -> Result<(u16, String)> {
    let Some(rest) = base.strip_prefix("http://") else {
        bail!("admin URL `{base}` must start with http:// (https is not supported)");
    };
    let host_port = rest.split('/').next().unwrap_or(rest);
    let addr = if host_port.contains(':') { host_port.to_string() } else { format!("{host_port}:80") };
    let mut stream = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Unreachable(format!("cannot connect to the admin API at {base}: {e}")).into()),
        Err(_) => return Err(Unreachable(format!("connecting to the admin API at {base} timed out")).into()),
    };
    let exchange = async {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\nUser-Agent: sluice-cli\r\n");
        if let Some(body) = json_body {
            head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        if let Some(body) = json_body {
            stream.write_all(body).await?;
        }
        let mut raw = Vec::new();
        (&mut stream).take(RESPONSE_BYTES_MAX).read_to_end(&mut raw).await?;
        anyhow::Ok(raw)
    };
    let raw = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| Unreachable(format!("the admin API at {base} did not answer within {}s", timeout.as_secs())))??;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| anyhow!("the admin API at {base} sent a malformed HTTP response"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("the admin API at {base} sent no HTTP status"))?;
    let chunked =
        head.lines().any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.to_ascii_lowercase().contains("chunked"));
    Ok((status, if chunked { dechunk(body) } else { body.to_string() }))
}

/// Joins the chunks of a chunked body (sizes in hex, each followed by CRLF).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        let (Some(chunk), Some(tail)) = (after.get(..size), after.get(size..)) else { break };
        if size == 0 {
            break;
        }
        out.push_str(chunk);
        rest = tail.strip_prefix("\r\n").unwrap_or(tail);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn dechunks() {
        assert_eq!(super::dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
        assert_eq!(super::dechunk("zz\r\n"), "");
    }
}
