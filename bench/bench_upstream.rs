//! A deliberately fast MCP upstream for `scripts/bench proxy`: every POST is answered with
//! one fixed JSON-RPC result, and a GET opens an SSE stream that stays open and idle.
//! Usage: bench_upstream PORT [ISSUER]
//! With ISSUER (for `scripts/bench broker`) it is an OAuth-protected resource of that
//! authorization server: protected-resource metadata, and `401` with a challenge for a POST
//! without a bearer token (any token is accepted: the gateway's cost is what is measured).

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
    let issuer = std::env::args().nth(2);
    let metadata = issuer.as_ref().map(|i| {
        format!(
            r#"{{"resource":"http://127.0.0.1:{port}/mcp","authorization_servers":["{i}"],"scopes_supported":["mcp:tools"]}}"#
        )
    });
    let protected = issuer.is_some();
    let challenge = format!(
        r#"Bearer resource_metadata="http://127.0.0.1:{port}/.well-known/oauth-protected-resource/mcp""#
    );
    let app = Router::new().route(
        "/mcp",
        post(move |headers: axum::http::HeaderMap| async move {
            if protected && !headers.contains_key("authorization") {
                return axum::response::IntoResponse::into_response((
                    axum::http::StatusCode::UNAUTHORIZED,
                    [("www-authenticate", challenge)],
                ));
            }
            axum::response::IntoResponse::into_response((
                [("content-type", "application/json")],
                ANSWER,
            ))
        })
        .get(|| async {
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
    let app = match metadata {
        Some(doc) => app.route(
            "/.well-known/oauth-protected-resource/mcp",
            axum::routing::get(
                move || async move { ([("content-type", "application/json")], doc) },
            ),
        ),
        None => app,
    };
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await
}
