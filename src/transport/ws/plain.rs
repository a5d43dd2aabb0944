//! A WebSocket through hyper (`--fast-paths off`): the socket comes from
//! `hyper::upgrade::on`, events come from the hub's channel ([`Subscription`]), and one
//! task writes and reads the frames with the same frame code as the fast path. It is the
//! reference the fast path is compared against, so it stays plain: each frame is written
//! when it is ready, and a read of the socket is answered before the next one.

use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::frame;
use crate::api::ws::{Ws, CLOSE_WAIT, FINISHED};
use crate::hub::{Event, Subscription};
use crate::telemetry::DeliverySampler;
use crate::transport::direct::{Life, Stop, Wire};

/// Reads at most this much at a time.
const READ_BUFFER: usize = 8 * 1024;

pub struct Session {
    /// `None`: the client already has the terminal event; the socket only says goodbye.
    pub subscription: Option<Subscription>,
    pub life: Life,
    pub reader: frame::Reader,
    pub send_timeout: Duration,
    pub delivery: DeliverySampler,
}

/// How the session's loop ended.
enum End {
    /// The client left, or the socket failed: nothing more to write.
    Gone,
    /// Write this close frame; with `linger`, wait for the client's answer to it.
    Close { frame: Bytes, linger: bool },
}

impl Session {
    pub async fn run<S: AsyncRead + AsyncWrite + Unpin>(mut self, io: S) {
        let (mut rd, mut wr) = tokio::io::split(io);
        let send_timeout = self.send_timeout;
        let mut buf = vec![0u8; READ_BUFFER];
        let life = &mut self.life;
        let end = loop {
            tokio::select! {
                biased;
                _ = &mut life.shutdown => break close(Ws::stop(Stop::Shutdown)),
                _ = life.end_of_life.as_mut() => break close(Ws::stop(Stop::EndOfLife)),
                event = next(&mut self.subscription) => {
                    let Some(event) = event else {
                        break close(Bytes::from_static(FINISHED));
                    };
                    if write(&mut wr, Ws::framed(&event), send_timeout).await.is_err() {
                        break End::Gone;
                    }
                    life.last_write = Instant::now();
                    self.delivery.delivered(event.published_at());
                }
                _ = life.timer.as_mut() => {
                    let now = Instant::now();
                    let due = life.last_write + life.heartbeat;
                    if now < due {
                        life.timer.as_mut().reset(due);
                        continue;
                    }
                    life.timer.as_mut().reset(now + life.heartbeat);
                    life.last_write = now;
                    if write(&mut wr, &[0x80 | frame::PING, 0], send_timeout).await.is_err() {
                        break End::Gone;
                    }
                }
                read = rd.read(&mut buf) => {
                    let n = match read {
                        Ok(0) | Err(_) => break End::Gone,
                        Ok(n) => n,
                    };
                    match heard(&mut self.reader, &buf[..n], false) {
                        Heard::Nothing(None) => {}
                        Heard::Nothing(Some(ping)) => {
                            // Only the newest ping of a read is answered (RFC 6455 §5.5.3).
                            let pong = control_frame(frame::PONG, &ping);
                            if write(&mut wr, &pong, send_timeout).await.is_err() {
                                break End::Gone;
                            }
                        }
                        Heard::Closed(frame) => break End::Close { frame, linger: false },
                        Heard::Failed(frame) => break close(frame),
                    }
                }
            }
        };
        let End::Close { frame, linger } = end else {
            return;
        };
        if write(&mut wr, &frame, send_timeout).await.is_err() || !linger {
            return;
        }
        // Wait briefly for the client's close (RFC 6455 §7.1.1), reading what comes
        // before it.
        let reader = &mut self.reader;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            loop {
                match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if let Heard::Closed(_) = heard(reader, &buf[..n], true) {
                            return;
                        }
                    }
                }
            }
        })
        .await;
        let _ = wr.shutdown().await;
    }
}

fn close(frame: Bytes) -> End {
    End::Close {
        frame,
        linger: true,
    }
}

/// What one read of the socket said.
enum Heard {
    /// Nothing that ends the socket; the newest ping's payload, if any.
    Nothing(Option<Bytes>),
    /// The client closed: our answer (its code, or our failure's close if one came first).
    Closed(Bytes),
    /// The client broke the protocol: close with this frame.
    Failed(Bytes),
}

fn heard(reader: &mut frame::Reader, mut input: &[u8], closing: bool) -> Heard {
    let mut ping = None;
    let mut failed: Option<Bytes> = None;
    while let Some(incoming) = reader.next(&mut input) {
        match incoming {
            Ok(frame::Incoming::Ping(payload)) => ping = Some(payload),
            Ok(frame::Incoming::Close(code)) => {
                let answer = failed.unwrap_or_else(|| frame::close(code, ""));
                return Heard::Closed(answer);
            }
            Err(fail) => failed = Some(fail.close_frame()),
        }
    }
    match failed {
        Some(frame) => Heard::Failed(frame),
        None if closing => Heard::Nothing(None),
        None => Heard::Nothing(ping),
    }
}

/// The next event, or `None` once the stream is over.
async fn next(subscription: &mut Option<Subscription>) -> Option<Event> {
    subscription.as_mut()?.next().await
}

/// A whole control frame (payload at most 125 bytes, as pings are).
fn control_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut head = [0u8; 20];
    let len = frame::head(opcode, payload.len(), &mut head);
    let mut out = Vec::with_capacity(len + payload.len());
    out.extend_from_slice(&head[..len]);
    out.extend_from_slice(payload);
    out
}

/// Writes `bytes`, giving the client the send timeout to take them.
async fn write<W: AsyncWrite + Unpin>(
    wr: &mut W,
    bytes: &[u8],
    send_timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(send_timeout, async {
        wr.write_all(bytes).await?;
        wr.flush().await
    })
    .await
    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}
