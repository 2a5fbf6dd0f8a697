//! The byte stream under each API connection, with the two rules hyper cannot be told:
//!
//! - **A connection that sends nothing is closed.** hyper's HTTP/1 header timeout starts
//!   only once the protocol is known, and telling HTTP/1 from HTTP/2 waits for the first
//!   bytes; so the first byte must arrive within [`FIRST_BYTE_TIMEOUT`].
//! - **Every error answer is JSON.** hyper answers a request it cannot parse (a URI over
//!   64 KiB: 414, a head over its buffer: 431, a malformed line: 400) by itself, with an
//!   empty body, before any route runs. Such an automatic answer is recognised on its
//!   way out (an HTTP/1 error status with `content-length: 0`, which no route sends) and
//!   replaced by the same status with the API's `{"error", "code"}` body.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// How long a new connection may stay silent before it is closed.
pub(crate) const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(30);

/// A connection's stream, guarded as the module says.
pub(crate) struct GuardedIo<I> {
    inner: I,
    /// Until the first byte arrives: when the connection is given up.
    first_byte: Option<Pin<Box<Sleep>>>,
    /// A replacement answer being written: the bytes, how far, and what to report.
    rewrite: Option<(Vec<u8>, usize, usize)>,
}

impl<I> GuardedIo<I> {
    pub(crate) fn new(inner: I, first_byte_timeout: Duration) -> Self {
        GuardedIo {
            inner,
            first_byte: Some(Box::pin(tokio::time::sleep(first_byte_timeout))),
            rewrite: None,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for GuardedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Some(deadline) = this.first_byte.as_mut() {
            match &polled {
                Poll::Ready(Ok(())) if buf.filled().len() > before => this.first_byte = None,
                Poll::Pending if deadline.as_mut().poll(cx).is_ready() => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the client sent nothing",
                    )));
                }
                _ => {}
            }
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for GuardedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.rewrite.is_none() {
            match json_error_answer(buf) {
                Some(answer) => this.rewrite = Some((answer, 0, buf.len())),
                None => return Pin::new(&mut this.inner).poll_write(cx, buf),
            }
        }
        let Some((answer, written, report)) = this.rewrite.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        while *written < answer.len() {
            match Pin::new(&mut this.inner).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                other => return other,
            }
        }
        let report = *report;
        // Later writes (none expected: hyper closes after such an answer) pass through.
        answer.clear();
        this.rewrite = None;
        Poll::Ready(Ok(report))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// If `head` is hyper's automatic answer to a request it could not parse, the same answer
/// with a JSON body.
fn json_error_answer(head: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(head).ok()?;
    let (status_line, rest) = text.split_once("\r\n")?;
    let status = status_line.strip_prefix("HTTP/1.1 ")?.get(..3)?;
    let message = match status {
        "400" => "the request could not be parsed as HTTP/1.1",
        "414" => "the request URI is too long (at most 65534 bytes)",
        "431" => "the request head (request line and headers) is too large",
        _ => return None,
    };
    let headers = rest.strip_suffix("\r\n\r\n")?;
    if !headers
        .split("\r\n")
        .any(|h| h.eq_ignore_ascii_case("content-length: 0"))
    {
        return None;
    }
    let body = serde_json::to_vec(&crate::model::ApiError {
        error: message.into(),
        code: "invalid".into(),
        problems: Vec::new(),
    })
    .ok()?;
    let mut answer = format!(
        "{status_line}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&body);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn only_hyper_automatic_error_heads_are_rewritten() {
        let auto = b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let answer = String::from_utf8(json_error_answer(auto).unwrap()).unwrap();
        assert!(
            answer.starts_with("HTTP/1.1 414 URI Too Long\r\n"),
            "{answer}"
        );
        assert!(answer.ends_with(r#""code":"invalid"}"#), "{answer}");
        let ours = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert!(json_error_answer(ours).is_none());
        let with_body = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 40\r\n\r\n";
        assert!(json_error_answer(with_body).is_none());
    }

    #[tokio::test]
    async fn a_silent_connection_is_given_up() {
        let (client, server) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(server, Duration::from_millis(50));
        let mut buf = [0u8; 4];
        let e = io.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn bytes_pass_through_once_the_client_spoke() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(server, Duration::from_millis(50));
        client.write_all(b"GET").await.unwrap();
        let mut buf = [0u8; 3];
        io.read_exact(&mut buf).await.unwrap();
        // Past the first-byte timeout (on the paused clock): it no longer applies.
        tokio::time::advance(Duration::from_millis(80)).await;
        client.write_all(b"!").await.unwrap();
        io.read_exact(&mut buf[..1]).await.unwrap();
        assert_eq!(&buf[..1], b"!");
    }
}
