//! The gateway as an OAuth client of upstream MCP servers that demand OAuth themselves
//! (DESIGN.md role 5): discovery ([`discovery`]), registration ([`registration`]), the
//! per-person connect flow, the vault and refresh ([`service`]), the vault as the proxy's
//! credential source ([`source`]), and the operator's probe.

pub mod discovery;
pub mod registration;
pub mod service;
pub mod source;

pub use service::{Broker, BrokerError, ConnectionStatus};

use crate::config::Config;

/// `upstreams probe NAME`: discovery and registration for one configured upstream, every
/// step written to `out`; an error names where it stopped.
pub async fn probe(
    config: &Config,
    name: &str,
    store: &crate::store::SharedStore,
    now: crate::clock::Timestamp,
    out: &mut impl std::io::Write,
) -> Result<(), String> {
    let upstream = config
        .upstreams
        .iter()
        .find(|u| u.name == name)
        .ok_or_else(|| format!("no upstream named `{name}`"))?;
    let url = upstream
        .url
        .as_deref()
        .ok_or_else(|| format!("upstream `{name}` has no url: only HTTP upstreams use OAuth"))?;
    let url = url::Url::parse(url).map_err(|e| format!("upstream `{name}`: url: {e}"))?;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(std::time::Duration::from_secs(
            config.proxy.connect_timeout_secs,
        ))
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let fetcher = crate::net::SafeFetcher::new(
        config.broker.allow_http_loopback,
        config.server.egress_proxy.as_deref(),
    )
    .map_err(|e| e.to_string())?;
    let mut steps = Vec::new();
    let found = discovery::discover(&url, &client, &fetcher, &mut steps).await;
    let published = config.broker.client_metadata_url.as_deref();
    let cimd = registration::client_metadata_usable(
        &config.public_url(),
        published,
        config.broker.allow_http_loopback,
    );
    let configured = match &upstream.credentials {
        crate::config::UpstreamCredentials::Oauth {
            client_id: Some(id),
            ..
        } => Some(id.clone()),
        _ => None,
    };
    let registered = match &found {
        Ok(d)
            if configured.is_some() || (cimd && d.server.client_id_metadata_document_supported) =>
        {
            let client_id = configured.clone().unwrap_or_else(|| {
                registration::client_metadata_url(&config.public_url(), published, name)
            });
            Some(Ok(registration::Registered {
                client_id,
                method: if configured.is_some() {
                    "configured".into()
                } else {
                    "cimd".into()
                },
                reused: true,
            }))
        }
        Ok(d) => {
            let keys = config.keys.encryption_keys().map_err(|e| e.to_string())?;
            let public = config.public_url();
            let settings = service::oauth_settings(config, upstream)
                .unwrap_or_else(|| registration::settings_fingerprint(url.as_str(), &public));
            Some(
                registration::register(
                    name,
                    &settings,
                    d,
                    &public,
                    store,
                    &fetcher,
                    keys.as_ref(),
                    now,
                    &mut steps,
                )
                .await,
            )
        }
        Err(_) => None,
    };
    let write = |out: &mut dyn std::io::Write, line: String| {
        let _ = writeln!(out, "{}", crate::text::printable(&line));
    };
    for s in &steps {
        write(out, format!("{:<32} {}", s.what, s.url));
        write(out, format!("{:<32} → {}", "", s.outcome));
    }
    match found {
        Ok(d) => {
            let m = &d.server;
            write(
                out,
                format!("resource                         {}", d.resource),
            );
            write(
                out,
                format!("issuer                           {}", m.issuer),
            );
            write(
                out,
                format!(
                    "authorization_endpoint           {}",
                    m.authorization_endpoint.as_deref().unwrap_or("-")
                ),
            );
            write(
                out,
                format!(
                    "token_endpoint                   {}",
                    m.token_endpoint.as_deref().unwrap_or("-")
                ),
            );
            write(
                out,
                format!(
                    "registration                     {}",
                    match (
                        &m.registration_endpoint,
                        m.client_id_metadata_document_supported
                    ) {
                        (_, true) => format!(
                            "Client ID Metadata Documents (the gateway's is {}{})",
                            registration::client_metadata_url(
                                &config.public_url(),
                                published,
                                name
                            ),
                            if cimd {
                                ""
                            } else {
                                ", but it must be on https to be fetched"
                            }
                        ),
                        (Some(r), false) => format!("dynamic registration at {r}"),
                        (None, false) =>
                            "none offered: configure a client id and secret".to_string(),
                    }
                ),
            );
            write(
                out,
                format!(
                    "scopes                           {}",
                    d.challenge_scope.clone().unwrap_or_else(|| {
                        if d.resource_scopes.is_empty() {
                            m.scopes_supported.join(" ")
                        } else {
                            d.resource_scopes.join(" ")
                        }
                    })
                ),
            );
            write(
                out,
                format!(
                    "iss in authorization responses   {}",
                    if m.authorization_response_iss_parameter_supported {
                        "promised"
                    } else {
                        "not promised"
                    }
                ),
            );
            write(out, "discovery: OK".into());
            match registered {
                Some(Ok(r)) => {
                    write(
                        out,
                        format!(
                            "client_id                        {} ({}{})",
                            crate::text::printable(&r.client_id),
                            r.method,
                            match (r.method.as_str(), r.reused) {
                                ("configured" | "cimd", _) => "",
                                (_, true) => ", stored",
                                (_, false) => ", registered now",
                            }
                        ),
                    );
                    write(out, "registration: OK".into());
                    Ok(())
                }
                // Remote servers' text (an issuer, a resource) is in these: printed inert.
                Some(Err(e)) => {
                    Err(crate::text::printable(&format!("registration stopped: {e}")).into_owned())
                }
                None => Ok(()),
            }
        }
        Err(e) => Err(crate::text::printable(&format!("discovery stopped: {e}")).into_owned()),
    }
}
