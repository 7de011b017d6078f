//! Lingering close: the part of a request body a handler left unread is read and thrown away
//! (up to [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`]) before the answer goes out.
//!
//! Why: a request over the body limit is answered 413 without reading its body (the limit is
//! checked against `Content-Length` up front, or after the first 16 MiB of a chunked body).
//! If the server then closed the connection with the client's bytes still arriving, the kernel
//! would answer them with a reset, and a client that finishes sending before it reads (Python's
//! urllib, many HTTP libraries) would see a broken pipe instead of the 413. nginx's
//! `lingering_close` exists for the same reason. Beyond the bounds the connection is closed as
//! before: a client cannot make the server read without end.
//!
//! A client that sent `Expect: 100-continue` and whose body was never asked for has not sent
//! it and will not: nothing is read, and the answer goes out at once (hyper sends `100
//! Continue` only when a handler first reads the body).
//!
//! Invariant: the body a handler sees is the client's body unchanged (same frames, same size
//! hint, so the body limit's `Content-Length` check still applies before anything is read).

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

/// Most bytes of an unread body read and discarded after its request was answered.
pub const DRAIN_MAX_BYTES: u64 = 64 << 20;
/// Longest time spent reading an unread body.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(10);

/// What a handler left of the request body when it dropped it.
#[derive(Default)]
struct Leftover {
    /// The rest of the body, if it did not reach its end.
    body: Option<Body>,
    /// Whether anything asked the body for a frame.
    polled: bool,
}

/// The request body as handlers see it; hands what is left of it back when dropped.
struct Tracked {
    inner: Option<Body>,
    polled: bool,
    leftover: Arc<Mutex<Leftover>>,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        self.polled = true;
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = Pin::new(inner).poll_frame(cx);
        if let Poll::Ready(None) = frame {
            self.inner = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(HttpBody::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(HttpBody::size_hint)
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        // A poisoned lock only means another holder panicked; the slot is still a plain value.
        let mut left = self.leftover.lock().unwrap_or_else(PoisonError::into_inner);
        left.polled = self.polled;
        left.body = self.inner.take().filter(|b| !b.is_end_stream());
    }
}

/// Middleware: runs the request, then reads and discards what the handler left of its body
/// (within the bounds above) before returning the answer.
pub async fn drain_unread_body(req: Request, next: Next) -> Response {
    if req.body().is_end_stream() {
        // No body (most GETs): nothing can be left unread.
        return next.run(req).await;
    }
    let expects_continue = req
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let leftover = Arc::new(Mutex::new(Leftover::default()));
    let (parts, body) = req.into_parts();
    let tracked = Tracked {
        inner: Some(body),
        polled: false,
        leftover: leftover.clone(),
    };
    let response = next
        .run(Request::from_parts(parts, Body::new(tracked)))
        .await;
    let left = std::mem::take(&mut *leftover.lock().unwrap_or_else(PoisonError::into_inner));
    if let Some(body) = left.body
        && (left.polled || !expects_continue)
    {
        discard(body).await;
    }
    response
}

/// Reads `body` to its end, or until the byte or time bound, and drops what it read.
async fn discard(mut body: Body) {
    let read_all = async {
        let mut read = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return };
            if let Some(data) = frame.data_ref() {
                read += data.len() as u64;
                if read > DRAIN_MAX_BYTES {
                    return;
                }
            }
        }
    };
    if tokio::time::timeout(DRAIN_MAX_TIME, read_all)
        .await
        .is_err()
    {
        tracing::debug!("an unread request body was still arriving after {DRAIN_MAX_TIME:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::extract::DefaultBodyLimit;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tower::ServiceExt;

    /// A body that counts what was read from it, so a test sees whether the middleware drained it.
    fn counted(chunks: usize, size: usize, counter: Arc<Mutex<usize>>) -> Body {
        let stream = futures::stream::iter((0..chunks).map(move |_| {
            *counter.lock().unwrap() += size;
            Ok::<_, std::io::Error>(Bytes::from(vec![b'x'; size]))
        }));
        Body::from_stream(stream)
    }

    fn app() -> Router {
        Router::new()
            .route("/ignore", post(|| async { StatusCode::NO_CONTENT }))
            .route("/read", post(|b: Bytes| async move { b.len().to_string() }))
            .layer(DefaultBodyLimit::max(1 << 20))
            .layer(axum::middleware::from_fn(drain_unread_body))
    }

    #[tokio::test]
    async fn an_unread_or_refused_body_is_read_to_its_end_before_the_answer() {
        for (path, status) in [("/ignore", 204), ("/read", 413)] {
            let read = Arc::new(Mutex::new(0));
            // 4 MiB in 64 KiB chunks: over the 1 MiB limit, under the drain bound.
            let req = Request::post(path)
                .body(counted(64, 64 << 10, read.clone()))
                .unwrap();
            let resp = app().oneshot(req).await.unwrap();
            assert_eq!(resp.status().as_u16(), status, "{path}");
            assert_eq!(
                *read.lock().unwrap(),
                4 << 20,
                "{path}: the whole body was read"
            );
        }
    }

    #[tokio::test]
    async fn a_handler_sees_the_body_unchanged() {
        let read = Arc::new(Mutex::new(0));
        let req = Request::post("/read")
            .body(counted(8, 1000, read.clone()))
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 100).await.unwrap();
        assert_eq!(&body[..], b"8000");
    }

    #[tokio::test]
    async fn draining_stops_at_its_byte_bound() {
        let read = Arc::new(Mutex::new(0));
        let chunk = 1 << 20;
        let chunks = (DRAIN_MAX_BYTES as usize / chunk) * 4;
        let req = Request::post("/ignore")
            .body(counted(chunks, chunk, read.clone()))
            .unwrap();
        app().oneshot(req).await.unwrap();
        let read = *read.lock().unwrap() as u64;
        assert!(
            read > DRAIN_MAX_BYTES && read <= DRAIN_MAX_BYTES + chunk as u64,
            "read {read}"
        );
    }

    #[tokio::test]
    async fn an_unasked_body_of_a_client_expecting_100_continue_is_not_read() {
        let read = Arc::new(Mutex::new(0));
        let req = Request::post("/ignore")
            .header("expect", "100-continue")
            .body(counted(4, 1000, read.clone()))
            .unwrap();
        let resp = app().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(*read.lock().unwrap(), 0);
    }
}
