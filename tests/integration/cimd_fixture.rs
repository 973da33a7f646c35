//! A local web server that serves a Client ID Metadata Document, as a client's own site would.

use axum::Router;
use axum::routing::get;
use serde_json::{Value, json};

pub struct CimdFixture {
    pub client_id: String,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for CimdFixture {
    fn drop(&mut self) {
        self._task.abort();
    }
}

impl CimdFixture {
    /// Serves `document(client_id)` at `/client.json` on a loopback port.
    pub async fn serve(document: impl Fn(&str) -> Value + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client_id = format!("http://{}/client.json", listener.local_addr().unwrap());
        let doc = document(&client_id);
        let app = Router::new().route(
            "/client.json",
            get(move || {
                let doc = doc.clone();
                async move { ([("cache-control", "max-age=60")], axum::Json(doc)) }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            client_id,
            _task: task,
        }
    }

    pub async fn standard(redirect: &str) -> Self {
        let redirect = redirect.to_string();
        Self::serve(move |id| {
            json!({
                "client_id": id,
                "client_name": "Fixture Client",
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token"],
                "token_endpoint_auth_method": "none"
            })
        })
        .await
    }
}
