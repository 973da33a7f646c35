//! A deliberately fast MCP upstream for `scripts/bench proxy`: every POST is answered with
//! one fixed JSON-RPC result, and a GET opens an SSE stream that stays open and idle.
//! Usage: bench_upstream PORT

use std::convert::Infallible;

use axum::Router;
use axum::body::Body;
use axum::routing::post;

const ANSWER: &str = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"ok"}],"isError":false}}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(18081);
    let app = Router::new().route(
        "/mcp",
        post(|| async { ([("content-type", "application/json")], ANSWER) }).get(|| async {
            let first = futures_util::stream::once(async {
                Ok::<_, Infallible>(bytes::Bytes::from_static(b": open\n\n"))
            });
            let stream = futures_util::StreamExt::chain(first, futures_util::stream::pending());
            (
                [("content-type", "text/event-stream")],
                Body::from_stream(stream),
            )
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
