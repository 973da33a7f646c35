//! The yardstick for `scripts/bench proxy`: a bare hyper reverse proxy with no
//! authentication, streaming both ways, in front of the same upstream.
//! Usage: bench_bare_proxy LISTEN_PORT UPSTREAM_PORT

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

type HttpClient = Client<HttpConnector, Body>;

async fn forward(State((client, port)): State<(HttpClient, u16)>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    parts.uri = match format!("http://127.0.0.1:{port}{pq}").parse() {
        Ok(u) => u,
        Err(_) => return http::StatusCode::BAD_REQUEST.into_response(),
    };
    parts.headers.remove(http::header::HOST);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => resp.map(Body::new),
        Err(_) => http::StatusCode::BAD_GATEWAY.into_response(),
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse::<u16>().ok());
    let (listen, upstream) = (args.next().unwrap_or(18082), args.next().unwrap_or(18081));
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let app = Router::new()
        .fallback(forward)
        .with_state((client, upstream));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", listen)).await?;
    axum::serve(listener, app).await
}
