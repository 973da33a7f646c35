//! Relays an upstream response body to the client as it arrives: no buffering, an idle
//! bound instead of a total one, and SSE keep-alive comments while an event stream is
//! quiet (inserted only between events, never inside one).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

const KEEPALIVE: &[u8] = b": keep-alive\n\n";
/// How much of a legacy SSE stream is held back while waiting for its `endpoint` event.
const MAX_ENDPOINT_WAIT: usize = 16 * 1024;

/// Rewrites the data of a legacy SSE stream's `endpoint` event; `None` ends the stream.
pub type EndpointRewrite = Box<
    dyn FnOnce(
            String,
        )
            -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>
        + Send,
>;

struct State {
    body: Incoming,
    /// Counts this request as in flight until the stream ends.
    _in_flight: super::InFlight,
    /// The last bytes sent, to know when the stream is between two SSE events.
    tail: super::sse::Tail,
    idle_for: Duration,
    done: bool,
    endpoint: Option<EndpointRewrite>,
    pending: Vec<u8>,
}

pub fn relay(
    body: Incoming,
    sse: bool,
    idle: Duration,
    keepalive: Duration,
    in_flight: super::InFlight,
    endpoint: Option<EndpointRewrite>,
) -> Body {
    let state = State {
        body,
        _in_flight: in_flight,
        tail: super::sse::Tail::default(),
        idle_for: Duration::ZERO,
        done: false,
        endpoint,
        pending: Vec::new(),
    };
    let tick = if sse && !keepalive.is_zero() {
        keepalive.min(idle)
    } else {
        idle
    };
    let stream = futures_util::stream::unfold(state, move |mut st| async move {
        if st.done {
            return None;
        }
        loop {
            match tokio::time::timeout(tick, st.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: nothing to relay in a streamed HTTP/1.1 body
                    };
                    if data.is_empty() {
                        continue;
                    }
                    st.idle_for = Duration::ZERO;
                    let data = if st.endpoint.is_some() {
                        st.pending.extend_from_slice(&data);
                        match super::sse::find_event(&st.pending, "endpoint") {
                            Some((start, end, value)) => {
                                let rewrite = st.endpoint.take()?;
                                let Some(new) = rewrite(value).await else {
                                    tracing::warn!(
                                        "legacy SSE endpoint could not be bound; closing the stream"
                                    );
                                    return None;
                                };
                                let mut out = st.pending[..start].to_vec();
                                out.extend_from_slice(
                                    format!("event: endpoint\ndata: {new}\n\n").as_bytes(),
                                );
                                out.extend_from_slice(&st.pending[end..]);
                                st.pending.clear();
                                Bytes::from(out)
                            }
                            None if st.pending.len() > MAX_ENDPOINT_WAIT => {
                                st.endpoint = None;
                                Bytes::from(std::mem::take(&mut st.pending))
                            }
                            None => continue,
                        }
                    } else {
                        data
                    };
                    st.tail.push(&data);
                    return Some((Ok::<Bytes, std::io::Error>(data), st));
                }
                Ok(Some(Err(e))) => {
                    st.done = true;
                    return Some((Err(std::io::Error::other(e)), st));
                }
                Ok(None) => return None,
                Err(_) => {
                    st.idle_for += tick;
                    if st.idle_for >= idle {
                        tracing::debug!("upstream stream idle; closing it");
                        return None;
                    }
                    if sse && st.tail.at_boundary() {
                        return Some((Ok(Bytes::from_static(KEEPALIVE)), st));
                    }
                }
            }
        }
    });
    Body::from_stream(stream)
}
