//! The publisher: one keep-alive HTTP/1.1 connection, one request at a time, each event
//! carrying its publish time. The request shape depends on the server under test.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::stream::parse_head;

/// Which server's publish API to speak.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Target {
    /// progress-hub: `POST /api/tasks/{id}/progress`, then `/complete`.
    Hub,
    /// Nchan: `POST /pub?id={id}` with the event as the body.
    Nchan,
}

impl Target {
    pub fn subscribe_path(self, channel: &str, ws: bool) -> String {
        match (self, ws) {
            (Target::Hub, false) => format!("/api/index-progress/{channel}/events"),
            (Target::Hub, true) => format!("/api/index-progress/{channel}/ws"),
            (Target::Nchan, _) => format!("/sub?id={channel}"),
        }
    }
}

pub struct Publisher {
    stream: TcpStream,
    host: String,
    target: Target,
    channel: String,
    buf: Vec<u8>,
    /// Padding that makes every event `payload_bytes` larger.
    pad: String,
}

impl Publisher {
    pub async fn connect(
        host: &str,
        target: Target,
        channel: &str,
        payload_bytes: usize,
    ) -> std::io::Result<Publisher> {
        let stream = TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Publisher {
            stream,
            host: host.to_string(),
            target,
            channel: channel.to_string(),
            buf: Vec::with_capacity(16 * 1024),
            pad: "x".repeat(payload_bytes),
        })
    }

    /// Creates the task (progress-hub) so subscribers can join it. Nchan creates channels
    /// on first use.
    pub async fn setup(&mut self) -> std::io::Result<()> {
        if self.target == Target::Hub {
            let body = format!(r#"{{"id":"{}"}}"#, self.channel);
            let status = self.request("/api/tasks", &body).await?;
            if status != 201 && status != 409 {
                return Err(std::io::Error::other(format!("create task: HTTP {status}")));
            }
        }
        Ok(())
    }

    /// Publishes event number `n` stamped with `t_ns`; returns the HTTP status.
    pub async fn event(&mut self, n: u64, t_ns: u64) -> std::io::Result<u16> {
        let (path, body) = match self.target {
            Target::Hub => (
                format!("/api/tasks/{}/progress", self.channel),
                format!(
                    r#"{{"processed":{n},"detail":{{"t":{t_ns},"pad":"{}"}}}}"#,
                    self.pad
                ),
            ),
            Target::Nchan => (
                format!("/pub?id={}", self.channel),
                format!(r#"{{"n":{n},"t":{t_ns},"pad":"{}"}}"#, self.pad),
            ),
        };
        self.request(&path, &body).await
    }

    /// Publishes the terminal event.
    pub async fn finish(&mut self, t_ns: u64) -> std::io::Result<u16> {
        let (path, body) = match self.target {
            Target::Hub => (
                format!("/api/tasks/{}/complete", self.channel),
                String::new(),
            ),
            Target::Nchan => (
                format!("/pub?id={}", self.channel),
                format!(r#"{{"final":true,"t":{t_ns}}}"#),
            ),
        };
        self.request(&path, &body).await
    }

    async fn request(&mut self, path: &str, body: &str) -> std::io::Result<u16> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body.as_bytes());
        self.stream.write_all(&request).await?;
        let (status, close) = tokio::time::timeout(Duration::from_secs(30), self.response())
            .await
            .map_err(|_| std::io::Error::other("no answer to a publish within 30 s"))??;
        if close {
            // nginx ends a keep-alive connection after `keepalive_requests`: reconnect, so
            // the next publish does not pay for it.
            self.stream = TcpStream::connect(&self.host).await?;
            self.stream.set_nodelay(true)?;
        }
        Ok(status)
    }

    /// Reads one whole response (Content-Length or chunked); returns its status and
    /// whether the server closes the connection after it.
    async fn response(&mut self) -> std::io::Result<(u16, bool)> {
        self.buf.clear();
        let head = loop {
            if let Some(head) = parse_head(&self.buf) {
                break head;
            }
            self.read_more().await?;
        };
        if let Some(len) = head.content_length {
            while self.buf.len() < head.len + len {
                self.read_more().await?;
            }
        } else if head.chunked {
            while !self.buf[head.len..].ends_with(b"0\r\n\r\n") {
                self.read_more().await?;
            }
        }
        Ok((head.status, head.close))
    }

    async fn read_more(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 8192];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::other(
                "server closed the publish connection",
            ));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}
