//! A deliberately small HTTP/1.1 client over a raw `TcpStream`, for tests of
//! primusd's HTTP endpoint: one request per connection (`Connection: close`), the
//! whole answer read until the server closes. Raw bytes can be sent too, to test
//! what the server does with garbage.

use anyhow::{anyhow, bail, Context, Result};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased; a repeated header keeps its last value.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (an error names the status and the body).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("status {} body is not JSON: {:?}", self.status, self.text()))
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str)
    }
}

/// `GET path` on `addr` (HOST:PORT), bounded by `timeout` as a whole.
pub async fn get(addr: &str, path: &str, timeout: Duration) -> Result<HttpResponse> {
    request(addr, "GET", path, timeout).await
}

/// `METHOD path` on `addr` with an empty body.
pub async fn request(addr: &str, method: &str, path: &str, timeout: Duration) -> Result<HttpResponse> {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    let raw = send_raw(addr, req.as_bytes(), timeout).await?;
    parse(&raw).with_context(|| format!("{method} {path} on {addr}"))
}

/// Send `bytes` on a fresh connection and read until the server closes it (or
/// `timeout` passes: then what was read so far).
pub async fn send_raw(addr: &str, bytes: &[u8], timeout: Duration) -> Result<Vec<u8>> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.with_context(|| format!("connect to {addr}"))?;
        s.write_all(bytes).await.context("write request")?;
        let mut out = Vec::new();
        // A reset after the answer (the server closed with unread input) still leaves
        // the answer in `out`.
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        Ok::<_, anyhow::Error>(out)
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| anyhow!("no complete answer from {addr} within {timeout:?}"))?
}

/// Parse one HTTP/1.1 response (Content-Length, chunked, or until close).
pub fn parse(raw: &[u8]) -> Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| anyhow!("no complete response head in {:?}", String::from_utf8_lossy(raw)))?;
    let head = std::str::from_utf8(&raw[..end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut headers = BTreeMap::new();
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let rest = &raw[end + 4..];
    let body = if headers.get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?
    } else if let Some(n) = headers.get("content-length") {
        let n: usize = n.parse().with_context(|| format!("bad content-length {n:?}"))?;
        if rest.len() < n {
            bail!("body cut short: {} of {n} bytes", rest.len());
        }
        rest[..n].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(HttpResponse { status, headers, body })
}

fn dechunk(mut rest: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(|| anyhow!("chunk size line missing"))?;
        let size_text = std::str::from_utf8(&rest[..eol]).context("chunk size")?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .with_context(|| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 {
            bail!("chunk cut short");
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Prometheus text format, checked line by line: every sample belongs to a family
/// announced by `# TYPE`, and every value is a number. Returns family name → type.
pub fn parse_prometheus(text: &str) -> Result<BTreeMap<String, String>> {
    let mut families = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.is_empty() || line.starts_with("# HELP ") {
            continue;
        }
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let (name, kind) = t.split_once(' ').ok_or_else(|| anyhow!("line {n}: bad TYPE line {line:?}"))?;
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                bail!("line {n}: unknown metric type {kind:?}");
            }
            families.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            bail!("line {n}: unexpected comment {line:?}");
        }
        let (series, value) = line.rsplit_once(' ').ok_or_else(|| anyhow!("line {n}: no value in {line:?}"))?;
        let v = value.trim();
        if !matches!(v, "+Inf" | "-Inf" | "NaN") && v.parse::<f64>().is_err() {
            bail!("line {n}: value {v:?} is not a number");
        }
        let name = series.split('{').next().unwrap_or_default();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
            bail!("line {n}: bad metric name {name:?}");
        }
        if series.contains('{') && !series.ends_with('}') {
            bail!("line {n}: unterminated labels in {series:?}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.get(*f).is_some_and(|t| t == "histogram")))
            .unwrap_or(name);
        if !families.contains_key(family) {
            bail!("line {n}: sample of {name} before its # TYPE line");
        }
    }
    Ok(families)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_content_length_and_chunked_bodies() {
        let r =
            parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
                .unwrap();
        assert_eq!((r.status, r.text().as_str()), (503, "{}"));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let r =
            parse(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.text(), "abcde");
    }

    #[test]
    fn prometheus_text_is_checked() {
        let ok = "# HELP a x\n# TYPE a gauge\na{l=\"1\"} 2\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_sum 0.5\nh_count 1\n";
        let f = parse_prometheus(ok).unwrap();
        assert_eq!(f.get("h").map(String::as_str), Some("histogram"));
        assert!(parse_prometheus("a 1\n").is_err(), "sample without TYPE");
        assert!(parse_prometheus("# TYPE a gauge\na x\n").is_err(), "non-numeric value");
    }
}
