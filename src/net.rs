//! The outbound HTTP client for URLs that came from outside (Client ID Metadata Documents,
//! later upstream discovery): https only, public addresses only (names are resolved and every
//! non-public answer dropped; IP literals are checked before connecting), no redirects, and
//! bounded in time and size.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{0}")]
    Refused(String),
    #[error("fetching failed: {0}")]
    Failed(String),
    #[error("the response is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the server answered HTTP {0}")]
    Status(u16),
}

/// True for addresses anyone on the internet could reach: not loopback, private,
/// link-local, shared, documentation, multicast or otherwise special.
pub fn is_public_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks to the
            // embedded address) and IPv4-translated (::ffff:0:a.b.c.d).
            if s[..6] == [0; 6] || s[..6] == [0, 0, 0, 0, 0xffff, 0] {
                return false;
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || (s[0] == 0x0064 && s[1] == 0xff9b) // NAT64 (and its local-use /48)
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]) // discard-only, 100::/64
                || (s[0] == 0x2002) // 6to4 embeds arbitrary v4
                || (s[0] == 0x2001 && s[1] == 0)) // Teredo
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    !(ip.is_private()
        || ip.is_loopback()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_documentation()
        || ip.is_multicast()
        || o[0] == 0
        || (o[0] == 100 && (o[1] & 0xc0) == 64) // shared address space, 100.64/10
        || (o[0] == 192 && o[1] == 0 && o[2] == 0) // IETF protocol assignments
        || (o[0] == 198 && (o[1] & 0xfe) == 18) // benchmarking, 198.18/15
        || o[0] >= 240)
}

fn is_loopback_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6 == Ipv6Addr::LOCALHOST,
    }
}

struct PublicOnlyResolver {
    allow_loopback: bool,
}

/// Why a name could not be used; found again in the error chain to tell the operator.
#[derive(Debug, thiserror::Error)]
enum ResolveError {
    #[error("the name did not resolve")]
    NoSuchName,
    #[error("the name resolves to no public address")]
    NotPublic,
}

impl Resolve for PublicOnlyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_string();
        let allow_loopback = self.allow_loopback;
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0))
                .await
                .map_err(|_| ResolveError::NoSuchName)?;
            let addrs: Vec<SocketAddr> = found
                .filter(|a| is_public_ip(a.ip()) || (allow_loopback && is_loopback_ip(a.ip())))
                .collect();
            if addrs.is_empty() {
                return Err(ResolveError::NotPublic.into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Host names that only mean something inside a network. With an egress proxy the proxy,
/// not the gateway, resolves names, so the gateway refuses these by name instead.
fn is_internal_name(host: &str) -> bool {
    let h = host.trim_end_matches('.').to_ascii_lowercase();
    !h.contains('.')
        || [
            ".localhost",
            ".local",
            ".localdomain",
            ".internal",
            ".intranet",
            ".lan",
            ".home",
            ".corp",
            ".private",
            ".home.arpa",
            ".in-addr.arpa",
            ".ip6.arpa",
            ".test",
            ".example",
            ".invalid",
            ".onion",
            ".consul",
            ".svc",
        ]
        .iter()
        .any(|s| h.ends_with(s))
        // Wildcard DNS that answers with the address written in the name (127.0.0.1.nip.io).
        || h.split('.')
            .collect::<Vec<_>>()
            .windows(4)
            .any(|w| w.iter().all(|l| !l.is_empty() && l.len() <= 3 && l.bytes().all(|b| b.is_ascii_digit())))
}

/// Fetches documents from URLs supplied by others.
#[derive(Clone)]
pub struct SafeFetcher {
    client: reqwest::Client,
    allow_http_loopback: bool,
    /// Names are resolved by an explicitly configured egress proxy.
    via_proxy: bool,
}

/// A fetched document with the freshness its response declared.
#[derive(Debug)]
pub struct Fetched {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
    /// `Cache-Control: max-age`, or `None` when absent; `Some(0)` for `no-store`/`no-cache`.
    pub max_age: Option<u64>,
}

impl SafeFetcher {
    /// `egress_proxy`: an explicit proxy for these fetches. Proxy environment variables
    /// (`HTTPS_PROXY`, `ALL_PROXY`) are never read: a proxy resolves names itself, and the
    /// public-address check would silently never run.
    pub fn new(allow_http_loopback: bool, egress_proxy: Option<&str>) -> Result<Self, FetchError> {
        let mut builder = reqwest::Client::builder().no_proxy();
        if let Some(p) = egress_proxy {
            builder = builder.proxy(
                reqwest::Proxy::all(p)
                    .map_err(|e| FetchError::Failed(format!("the egress proxy: {e}")))?,
            );
        }
        let client = builder
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            .dns_resolver(Arc::new(PublicOnlyResolver {
                allow_loopback: allow_http_loopback,
            }))
            .user_agent(concat!("mcp-oauth-gateway/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| FetchError::Failed(e.to_string()))?;
        Ok(Self {
            client,
            allow_http_loopback,
            via_proxy: egress_proxy.is_some(),
        })
    }

    /// Checks a URL before any connection: scheme, and IP-literal hosts.
    pub fn check_url(&self, url: &Url) -> Result<(), FetchError> {
        let loopback_host = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(is_loopback_ip(IpAddr::V4(ip))),
            Some(url::Host::Ipv6(ip)) => Some(is_loopback_ip(IpAddr::V6(ip))),
            Some(url::Host::Domain(d)) => Some(d.eq_ignore_ascii_case("localhost")).filter(|b| *b),
            None => return Err(FetchError::Refused("the URL has no host".into())),
        };
        let loopback_allowed = self.allow_http_loopback && loopback_host == Some(true);
        match url.scheme() {
            "https" => {}
            "http" if loopback_allowed => {}
            _ => return Err(FetchError::Refused("only https URLs are fetched".into())),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(FetchError::Refused("the URL carries credentials".into()));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal
            && !is_public_ip(ip)
            && !loopback_allowed
        {
            return Err(FetchError::Refused(format!("{ip} is not a public address")));
        }
        if self.via_proxy
            && let Some(url::Host::Domain(d)) = url.host()
            && is_internal_name(d)
        {
            return Err(FetchError::Refused(
                "the host is an internal name, and names are resolved by the egress proxy".into(),
            ));
        }
        Ok(())
    }

    pub async fn get(
        &self,
        url: &Url,
        accept: &str,
        max_bytes: usize,
    ) -> Result<Fetched, FetchError> {
        self.check_url(url)?;
        let resp = self
            .client
            .get(url.clone())
            .header(reqwest::header::ACCEPT, accept)
            .send()
            .await
            .map_err(|e| FetchError::Failed(without_url(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status(status.as_u16()));
        }
        if let Some(len) = resp.content_length()
            && len > max_bytes as u64
        {
            return Err(FetchError::TooLarge(max_bytes));
        }
        let content_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_max_age);
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| FetchError::Failed(without_url(&e)))?;
            if body.len() + chunk.len() > max_bytes {
                return Err(FetchError::TooLarge(max_bytes));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Fetched {
            body,
            content_type,
            max_age,
        })
    }
}

impl SafeFetcher {
    /// POSTs a JSON document (dynamic client registration): the same checks as [`Self::get`];
    /// any status comes back with its body, bounded, for the caller to read the error.
    pub async fn post_json(
        &self,
        url: &Url,
        body: &serde_json::Value,
        max_bytes: usize,
    ) -> Result<(u16, Vec<u8>), FetchError> {
        self.check_url(url)?;
        let request = self
            .client
            .post(url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .json(body);
        bounded(request, max_bytes).await
    }

    /// POSTs a form (token and revocation requests), with HTTP Basic client authentication
    /// when `basic` is given; the same checks and bounds as [`Self::post_json`].
    pub async fn post_form(
        &self,
        url: &Url,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
        max_bytes: usize,
    ) -> Result<(u16, Vec<u8>), FetchError> {
        self.check_url(url)?;
        bounded(form_request(&self.client, url, form, basic), max_bytes).await
    }
}

/// A form POST (token and revocation requests), with HTTP Basic client authentication when
/// `basic` is given, on any client: the safe one above, or one for a configured origin.
pub fn form_request(
    client: &reqwest::Client,
    url: &Url,
    form: &[(&str, &str)],
    basic: Option<(&str, &str)>,
) -> reqwest::RequestBuilder {
    let mut request = client
        .post(url.clone())
        .header(reqwest::header::ACCEPT, "application/json")
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(
            form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form)
                .finish(),
        );
    if let Some((id, secret)) = basic {
        // RFC 6749 §2.3.1: each part form-encoded before Basic.
        let enc = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        request = request.basic_auth(enc(id), Some(enc(secret)));
    }
    request
}

/// Sends a request and reads its answer, any status, at most `max_bytes` of it (declared or
/// streamed).
pub async fn bounded(
    request: reqwest::RequestBuilder,
    max_bytes: usize,
) -> Result<(u16, Vec<u8>), FetchError> {
    let resp = request
        .send()
        .await
        .map_err(|e| FetchError::Failed(without_url(&e)))?;
    let status = resp.status().as_u16();
    Ok((status, read_capped(resp, max_bytes).await?))
}

/// A response's body, at most `max_bytes` of it whether declared or streamed.
pub async fn read_capped(resp: reqwest::Response, max_bytes: usize) -> Result<Vec<u8>, FetchError> {
    if resp.content_length().is_some_and(|n| n > max_bytes as u64) {
        return Err(FetchError::TooLarge(max_bytes));
    }
    let mut out = Vec::new();
    let mut stream = resp.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| FetchError::Failed(without_url(&e)))?;
        if out.len() + chunk.len() > max_bytes {
            return Err(FetchError::TooLarge(max_bytes));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// A description of a failed fetch that names neither the URL nor anything it returned, but
/// does name the cause: an operator reading "could not connect" cannot tell a bad
/// certificate from a typo in the host name.
fn without_url(e: &reqwest::Error) -> String {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<ResolveError>() {
            return r.to_string();
        }
        let text = s.to_string().to_ascii_lowercase();
        if text.contains("certificate") || text.contains("invalidcertificate") {
            return "TLS certificate verification failed".into();
        }
        if text.contains("tls") || text.contains("handshake") {
            return "the TLS handshake failed".into();
        }
        if text.contains("connection refused") {
            return "the connection was refused".into();
        }
        source = s.source();
    }
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "could not connect".into()
    } else if e.is_redirect() {
        "redirects are not followed".into()
    } else if e.is_body() || e.is_decode() {
        "the response body could not be read".into()
    } else {
        "request failed".into()
    }
}

fn parse_max_age(v: &str) -> Option<u64> {
    let mut max_age = None;
    for d in v.split(',').map(str::trim) {
        let lower = d.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(0);
        }
        if let Some(n) = lower.strip_prefix("max-age=") {
            max_age = n.trim_matches('"').parse().ok();
        }
    }
    max_age
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "::1",
            "::7f00:1",
            "::ffff:0:7f00:1",
            "100::1",
            "64:ff9b:1::a00:1",
            "fc00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2001:db8::1",
            "224.0.0.1",
        ] {
            assert!(!is_public_ip(ip.parse().expect("ip")), "{ip}");
        }
        for ip in ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111"] {
            assert!(is_public_ip(ip.parse().expect("ip")), "{ip}");
        }
    }

    #[test]
    fn urls_checked_before_connecting() {
        let f = SafeFetcher::new(false, None).expect("client");
        let bad = [
            "http://example.com/x",
            "https://127.0.0.1/x",
            "https://[::1]/x",
            "https://10.0.0.1/x",
            "https://user:pw@example.com/x",
            "ftp://example.com/x",
        ];
        for u in bad {
            assert!(f.check_url(&Url::parse(u).expect("url")).is_err(), "{u}");
        }
        assert!(
            f.check_url(&Url::parse("https://example.com/x").expect("url"))
                .is_ok()
        );
        let dev = SafeFetcher::new(true, None).expect("client");
        assert!(
            dev.check_url(&Url::parse("http://127.0.0.1:9/x").expect("url"))
                .is_ok()
        );
        assert!(
            dev.check_url(&Url::parse("http://10.0.0.1/x").expect("url"))
                .is_err()
        );
        // With an egress proxy, names the proxy would resolve inside the network are refused
        // by name; public names and public literals pass.
        let proxied = SafeFetcher::new(false, Some("http://127.0.0.1:3128")).expect("client");
        for u in [
            "https://localhost/x",
            "https://db/x",
            "https://metadata.google.internal/x",
            "https://printer.local/x",
            "https://app.localhost./x",
            "https://10.1.2.3/x",
            "https://127.0.0.1.nip.io/x",
            "https://db.service.consul/x",
            "https://[::7f00:1]/x",
            "https://[::ffff:0:7f00:1]/x",
        ] {
            assert!(
                proxied.check_url(&Url::parse(u).expect("url")).is_err(),
                "{u}"
            );
        }
        assert!(
            proxied
                .check_url(&Url::parse("https://client.example.com/c.json").expect("url"))
                .is_ok()
        );
    }

    /// A name that resolves only to loopback is refused by the gateway's own resolver, with
    /// the cause named.
    #[tokio::test]
    async fn a_name_without_a_public_address_is_refused_by_name() {
        let f = SafeFetcher::new(false, None).expect("client");
        let err = f
            .get(
                &Url::parse("https://localhost:1/x").expect("url"),
                "*/*",
                10,
            )
            .await
            .expect_err("refused");
        assert!(err.to_string().contains("no public address"), "{err}");
    }

    #[test]
    fn cache_control() {
        assert_eq!(parse_max_age("public, max-age=600"), Some(600));
        assert_eq!(parse_max_age("no-store"), Some(0));
        assert_eq!(parse_max_age("public"), None);
    }
}
