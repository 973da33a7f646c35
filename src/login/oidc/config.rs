//! `[[login.oidc]]`: one identity provider, written as a provider profile and a few values.
//! A profile carries what each provider does its own way (issuer shape, scopes, extra
//! authorization parameters, which claim holds the username or the groups), so that an
//! operator writes `provider = "google"`, the client's id and secret, and an allow-list.

use serde::Deserialize;
use url::Url;

use crate::secret::Secret;

/// The providers the gateway knows the quirks of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Profile {
    /// Any OpenID Connect provider, by `issuer`.
    #[default]
    Oidc,
    Google,
    Entra,
    Okta,
    Keycloak,
    Auth0,
    Gitlab,
    /// OAuth 2.0 without OpenID Connect: the user, a verified e-mail address and
    /// organisation/team memberships come from GitHub's REST API.
    Github,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// In URLs (`<public_url>/login/<name>/callback`), in the store and in usernames.
    pub name: String,
    /// What the sign-in page's button says; by default after the provider.
    #[serde(default)]
    pub label: Option<String>,
    #[serde(default)]
    pub provider: Profile,
    /// The provider's issuer (discovery is at `<issuer>/.well-known/openid-configuration`).
    /// Needed for `oidc`, `okta` and `keycloak`; implied by the others' own settings.
    #[serde(default)]
    pub issuer: Option<String>,
    /// Entra ID: the directory (tenant) id or a verified domain of it.
    #[serde(default)]
    pub tenant: Option<String>,
    /// Auth0: the tenant's domain (`example.eu.auth0.com`), when `issuer` is not given.
    #[serde(default)]
    pub domain: Option<String>,
    pub client_id: String,
    pub client_secret: Secret,
    /// Scopes asked of the provider; the profile's when absent.
    #[serde(default)]
    pub scopes: Option<Vec<String>>,
    /// Auth0: the API whose access token is wanted (`audience`).
    #[serde(default)]
    pub audience: Option<String>,
    /// Google: the Workspace domain; sent as the `hd` hint and checked in the ID token.
    #[serde(default)]
    pub hosted_domain: Option<String>,
    /// Keep the provider's refresh token in the grant's sealed login context: each refresh
    /// of the gateway's tokens then checks the provider session (one the provider refuses
    /// ends the grant), and upstreams that opt in can be given the provider's access token.
    #[serde(default)]
    pub keep_provider_tokens: bool,
    /// Who may sign in. With all four empty, anyone the provider signs in; otherwise
    /// whoever matches one entry of any of them.
    #[serde(default)]
    pub allowed_emails: Vec<String>,
    #[serde(default)]
    pub allowed_domains: Vec<String>,
    #[serde(default)]
    pub allowed_groups: Vec<String>,
    /// GitHub: `org` or `org/team` (team by its slug).
    #[serde(default)]
    pub allowed_orgs: Vec<String>,
    /// The claim holding the username a new gateway user is named after.
    #[serde(default)]
    pub username_claim: Option<String>,
    /// The claim holding the groups (an array of strings).
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// GitHub: the web and API bases (GitHub Enterprise Server: `https://github.example.com`
    /// and `https://github.example.com/api/v3`).
    #[serde(default)]
    pub web_url: Option<String>,
    #[serde(default)]
    pub api_url: Option<String>,
    /// Entra ID: Microsoft Graph, asked for a user's groups when the ID token has too many
    /// to hold ("overage").
    #[serde(default)]
    pub graph_url: Option<String>,
    /// More parameters for the provider's authorization request (`prompt`, `acr_values`,
    /// `login_hint`…); the ones the gateway sets itself cannot be replaced.
    #[serde(default)]
    pub authorization_params: std::collections::BTreeMap<String, String>,
    /// Clock difference tolerated on the ID token's dates (at most 300).
    #[serde(default = "default_skew")]
    pub clock_skew_secs: i64,
    /// Bound on each call to the provider.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_skew() -> i64 {
    60
}

fn default_timeout() -> u64 {
    10
}

/// Who may sign in (all empty: anyone the provider signs in).
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    /// Lower-cased.
    pub emails: Vec<String>,
    /// Lower-cased, without `@`.
    pub domains: Vec<String>,
    pub groups: Vec<String>,
    /// GitHub: lower-cased `org` or `org/team`.
    pub orgs: Vec<String>,
}

impl AllowList {
    pub fn is_open(&self) -> bool {
        self.emails.is_empty()
            && self.domains.is_empty()
            && self.groups.is_empty()
            && self.orgs.is_empty()
    }
}

/// Where GitHub (or a GitHub Enterprise Server) is.
#[derive(Debug, Clone)]
pub struct GitHubUrls {
    pub authorize: Url,
    pub token: Url,
    pub api: Url,
}

/// One provider with its profile applied and every value checked.
#[derive(Debug, Clone)]
pub struct Settings {
    pub name: String,
    pub label: String,
    pub profile: Profile,
    /// The issuer as configured (for GitHub: its web base).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    /// Added to the authorization request.
    pub extra_params: Vec<(String, String)>,
    pub username_claim: String,
    pub groups_claim: Option<String>,
    pub hosted_domain: Option<String>,
    pub keep_tokens: bool,
    pub allow: AllowList,
    pub skew: i64,
    pub timeout: std::time::Duration,
    /// Entra's multi-tenant endpoints (`common`, `organizations`): the discovered issuer
    /// holds `{tenantid}`, filled from each token's `tid`.
    pub tenant_in_issuer: bool,
    /// `http` is accepted only for a provider on this machine (tests, a local Keycloak).
    pub allow_http_loopback: bool,
    pub github: Option<GitHubUrls>,
    /// Entra ID: Microsoft Graph's base, for the groups overage.
    pub graph: Option<Url>,
}

type Bad = (String, String);

impl OidcConfig {
    /// Applies the profile and checks every value; an error names the key (under
    /// `login.oidc[i]`) and what is wrong.
    pub fn resolve(&self, i: usize) -> Result<Settings, Bad> {
        let at = |key: &str, msg: String| (format!("login.oidc[{i}].{key}"), msg);
        if self.name == crate::login::LOCAL {
            return Err(at("name", "`local` is the gateway's own accounts".into()));
        }
        if self.client_id.trim().is_empty() {
            return Err(at("client_id", "must not be empty".into()));
        }
        if self.client_secret.expose().is_empty() {
            return Err(at("client_secret", "must not be empty".into()));
        }
        if !(0..=300).contains(&self.clock_skew_secs) {
            return Err(at("clock_skew_secs", "must be between 0 and 300".into()));
        }
        if !(1..=60).contains(&self.timeout_secs) {
            return Err(at("timeout_secs", "must be between 1 and 60".into()));
        }
        let needs = |key: &str, v: &Option<String>| {
            v.clone().filter(|s| !s.trim().is_empty()).ok_or_else(|| {
                at(
                    key,
                    format!("is needed with provider = \"{}\"", self.profile_name()),
                )
            })
        };
        let refuse = |key: &str, present: bool| {
            if present {
                Err(at(
                    key,
                    format!("does not apply to provider = \"{}\"", self.profile_name()),
                ))
            } else {
                Ok(())
            }
        };
        refuse(
            "tenant",
            self.tenant.is_some() && self.provider != Profile::Entra,
        )?;
        refuse(
            "domain",
            self.domain.is_some() && !matches!(self.provider, Profile::Auth0 | Profile::Okta),
        )?;
        refuse(
            "audience",
            self.audience.is_some() && self.provider != Profile::Auth0,
        )?;
        refuse(
            "hosted_domain",
            self.hosted_domain.is_some() && self.provider != Profile::Google,
        )?;
        refuse(
            "allowed_orgs",
            !self.allowed_orgs.is_empty() && self.provider != Profile::Github,
        )?;
        refuse(
            "web_url",
            self.web_url.is_some() && self.provider != Profile::Github,
        )?;
        refuse(
            "api_url",
            self.api_url.is_some() && self.provider != Profile::Github,
        )?;
        refuse(
            "graph_url",
            self.graph_url.is_some() && self.provider != Profile::Entra,
        )?;
        if self.provider == Profile::Google && !self.allowed_groups.is_empty() {
            return Err(at(
                "allowed_groups",
                "Google's ID tokens carry no groups; use allowed_domains or hosted_domain".into(),
            ));
        }
        if self.provider == Profile::Github && self.groups_claim.is_some() {
            return Err(at(
                "groups_claim",
                "GitHub has no ID token; its groups are `org/team`".into(),
            ));
        }
        let mut tenant_in_issuer = false;
        let mut extra_params = Vec::new();
        let offline = self.keep_provider_tokens;
        let (issuer, scopes, username_claim, groups_claim): (String, &[&str], &str, Option<&str>) =
            match self.provider {
                Profile::Oidc => (
                    needs("issuer", &self.issuer)?,
                    &["openid", "email", "profile"],
                    "preferred_username",
                    Some("groups"),
                ),
                Profile::Google => {
                    if let Some(hd) = &self.hosted_domain {
                        extra_params.push(("hd".into(), hd.to_ascii_lowercase()));
                    }
                    if offline {
                        // Google sends a refresh token only with these, and only when the
                        // person is asked again.
                        extra_params.push(("access_type".into(), "offline".into()));
                        extra_params.push(("prompt".into(), "consent".into()));
                    }
                    (
                        self.issuer
                            .clone()
                            .unwrap_or_else(|| "https://accounts.google.com".into()),
                        &["openid", "email", "profile"],
                        "email",
                        None,
                    )
                }
                Profile::Entra => {
                    let tenant = match (&self.tenant, &self.issuer) {
                        (Some(t), _) => t.clone(),
                        (None, Some(_)) => String::new(),
                        (None, None) => return Err(at("tenant", "is needed with provider = \"entra\" (the directory id, or `organizations`)".into())),
                    };
                    tenant_in_issuer = matches!(tenant.as_str(), "common" | "organizations" | "consumers");
                    // A domain name's discovery document names the tenant by its id, which
                    // the issuer check compares: only the id (or a multi-tenant name) works.
                    let is_guid = tenant.len() == 36
                        && tenant.bytes().enumerate().all(|(i, b)| {
                            if matches!(i, 8 | 13 | 18 | 23) { b == b'-' } else { b.is_ascii_hexdigit() }
                        });
                    if !tenant.is_empty() && !is_guid && !tenant_in_issuer {
                        return Err(at(
                            "tenant",
                            "is the directory (tenant) id, a GUID (or `organizations`, `common`)".into(),
                        ));
                    }
                    if !self.allowed_emails.is_empty() || !self.allowed_domains.is_empty() {
                        return Err(at(
                            if self.allowed_emails.is_empty() { "allowed_domains" } else { "allowed_emails" },
                            "Entra ID does not say whether an address is verified, so addresses cannot decide who signs in; use allowed_groups (or the tenant)".into(),
                        ));
                    }
                    (
                        self.issuer.clone().unwrap_or_else(|| {
                            format!("https://login.microsoftonline.com/{tenant}/v2.0")
                        }),
                        // v2 endpoints take scopes, never `resource`; the ID token is for
                        // the gateway itself, so only the OpenID scopes are asked.
                        &["openid", "email", "profile"],
                        "preferred_username",
                        Some("groups"),
                    )
                }
                Profile::Okta => (
                    match (&self.issuer, &self.domain) {
                        (Some(i), _) => i.clone(),
                        (None, Some(d)) => format!("https://{d}/oauth2/default"),
                        (None, None) => return Err(at("issuer", "is needed with provider = \"okta\" (e.g. https://example.okta.com/oauth2/default)".into())),
                    },
                    &["openid", "email", "profile"],
                    "preferred_username",
                    Some("groups"),
                ),
                Profile::Keycloak => (
                    needs("issuer", &self.issuer)?,
                    &["openid", "email", "profile"],
                    "preferred_username",
                    Some("groups"),
                ),
                Profile::Auth0 => {
                    if let Some(a) = &self.audience {
                        extra_params.push(("audience".into(), a.clone()));
                    }
                    (
                        match (&self.issuer, &self.domain) {
                            (Some(i), _) => i.clone(),
                            // Auth0's issuer ends with a slash, and is compared exactly.
                            (None, Some(d)) => format!("https://{d}/"),
                            (None, None) => return Err(at("domain", "is needed with provider = \"auth0\" (e.g. example.eu.auth0.com)".into())),
                        },
                        &["openid", "email", "profile"],
                        "nickname",
                        None,
                    )
                }
                Profile::Gitlab => (
                    self.issuer
                        .clone()
                        .unwrap_or_else(|| "https://gitlab.com".into()),
                    &["openid", "email", "profile"],
                    "nickname",
                    Some("groups_direct"),
                ),
                Profile::Github => (
                    self.web_url
                        .clone()
                        .unwrap_or_else(|| "https://github.com".into()),
                    &["read:user", "user:email"],
                    "login",
                    None,
                ),
            };
        let issuer_url = Url::parse(&issuer).map_err(|e| {
            at(
                if self.provider == Profile::Github {
                    "web_url"
                } else {
                    "issuer"
                },
                format!("not a URL: {e}"),
            )
        })?;
        let allow_http_loopback = crate::authorization::redirect::is_loopback(&issuer_url);
        let check_url = |key: &str, u: &Url| -> Result<(), Bad> {
            match u.scheme() {
                "https" => {}
                "http" if crate::authorization::redirect::is_loopback(u) => {}
                _ => return Err(at(key, "must be an https URL".into())),
            }
            if u.query().is_some() || u.fragment().is_some() || !u.username().is_empty() {
                return Err(at(
                    key,
                    "must have no query, fragment or credentials".into(),
                ));
            }
            Ok(())
        };
        check_url(
            if self.provider == Profile::Github {
                "web_url"
            } else {
                "issuer"
            },
            &issuer_url,
        )?;
        let mut scopes: Vec<String> = match &self.scopes {
            Some(s) => s.clone(),
            None => scopes.iter().map(|s| s.to_string()).collect(),
        };
        if self.provider != Profile::Github {
            if !scopes.iter().any(|s| s == "openid") {
                return Err(at("scopes", "must include `openid`".into()));
            }
            if offline
                && !matches!(self.provider, Profile::Google)
                && !scopes.iter().any(|s| s == "offline_access")
            {
                scopes.push("offline_access".into());
            }
        } else if !self.allowed_orgs.is_empty() && !scopes.iter().any(|s| s == "read:org") {
            scopes.push("read:org".into());
        }
        if let Some(bad) = scopes.iter().find(|s| {
            s.is_empty()
                || !s
                    .bytes()
                    .all(|b| b > 0x20 && b != b'"' && b != b'\\' && b < 0x7f)
        }) {
            return Err(at("scopes", format!("{bad:?} is not a scope")));
        }
        for (k, v) in &self.authorization_params {
            const OWN: [&str; 12] = [
                "response_type",
                "client_id",
                "redirect_uri",
                "scope",
                "state",
                "nonce",
                "code_challenge",
                "code_challenge_method",
                "request",
                "request_uri",
                "response_mode",
                "client_secret",
            ];
            if OWN.contains(&k.as_str()) {
                return Err(at(
                    "authorization_params",
                    format!("`{k}` is set by the gateway itself"),
                ));
            }
            extra_params.retain(|(name, _)| name != k);
            extra_params.push((k.clone(), v.clone()));
        }
        let github = if self.provider == Profile::Github {
            let base = issuer.trim_end_matches('/');
            let api = self.api_url.clone().unwrap_or_else(|| {
                if base == "https://github.com" {
                    "https://api.github.com".into()
                } else {
                    format!("{base}/api/v3")
                }
            });
            let parse = |key: &str, s: &str| -> Result<Url, Bad> {
                let u = Url::parse(s).map_err(|e| at(key, format!("not a URL: {e}")))?;
                check_url(key, &u)?;
                Ok(u)
            };
            Some(GitHubUrls {
                authorize: parse("web_url", &format!("{base}/login/oauth/authorize"))?,
                token: parse("web_url", &format!("{base}/login/oauth/access_token"))?,
                api: parse("api_url", &format!("{}/", api.trim_end_matches('/')))?,
            })
        } else {
            None
        };
        let graph = if self.provider == Profile::Entra {
            let raw = self
                .graph_url
                .clone()
                .unwrap_or_else(|| "https://graph.microsoft.com".into());
            let u = Url::parse(&format!("{}/", raw.trim_end_matches('/')))
                .map_err(|e| at("graph_url", format!("not a URL: {e}")))?;
            check_url("graph_url", &u)?;
            Some(u)
        } else {
            None
        };
        let lower = |v: &[String]| {
            v.iter()
                .map(|s| s.trim().to_ascii_lowercase())
                .collect::<Vec<_>>()
        };
        let allow = AllowList {
            emails: lower(&self.allowed_emails),
            domains: lower(&self.allowed_domains)
                .into_iter()
                .map(|d| d.trim_start_matches('@').to_string())
                .collect(),
            groups: self.allowed_groups.clone(),
            orgs: lower(&self.allowed_orgs),
        };
        if let Some(e) = allow.emails.iter().find(|e| !e.contains('@')) {
            return Err(at(
                "allowed_emails",
                format!("{e:?} is not an e-mail address"),
            ));
        }
        if let Some(d) = allow
            .domains
            .iter()
            .find(|d| d.is_empty() || d.contains('@'))
        {
            return Err(at("allowed_domains", format!("{d:?} is not a domain")));
        }
        if let Some(o) = allow
            .orgs
            .iter()
            .find(|o| o.is_empty() || o.split('/').count() > 2 || o.split('/').any(str::is_empty))
        {
            return Err(at(
                "allowed_orgs",
                format!("{o:?} is not `org` or `org/team`"),
            ));
        }
        let groups_claim = match &self.groups_claim {
            Some(c) => Some(c.clone()),
            None => groups_claim.map(str::to_string),
        };
        if !allow.groups.is_empty() && groups_claim.is_none() {
            return Err(at(
                "groups_claim",
                "is needed for allowed_groups with this provider".into(),
            ));
        }
        Ok(Settings {
            name: self.name.clone(),
            label: self
                .label
                .clone()
                .unwrap_or_else(|| format!("Sign in with {}", self.display_name())),
            profile: self.provider,
            issuer,
            client_id: self.client_id.clone(),
            client_secret: self.client_secret.clone(),
            scopes,
            extra_params,
            username_claim: self
                .username_claim
                .clone()
                .unwrap_or_else(|| username_claim.to_string()),
            groups_claim,
            hosted_domain: self.hosted_domain.as_ref().map(|d| d.to_ascii_lowercase()),
            keep_tokens: self.keep_provider_tokens,
            allow,
            skew: self.clock_skew_secs,
            timeout: std::time::Duration::from_secs(self.timeout_secs),
            tenant_in_issuer,
            allow_http_loopback,
            github,
            graph,
        })
    }

    fn profile_name(&self) -> &'static str {
        match self.provider {
            Profile::Oidc => "oidc",
            Profile::Google => "google",
            Profile::Entra => "entra",
            Profile::Okta => "okta",
            Profile::Keycloak => "keycloak",
            Profile::Auth0 => "auth0",
            Profile::Gitlab => "gitlab",
            Profile::Github => "github",
        }
    }

    fn display_name(&self) -> String {
        match self.provider {
            Profile::Oidc => self.name.clone(),
            Profile::Google => "Google".into(),
            Profile::Entra => "Microsoft".into(),
            Profile::Okta => "Okta".into(),
            Profile::Keycloak => "Keycloak".into(),
            Profile::Auth0 => "Auth0".into(),
            Profile::Gitlab => "GitLab".into(),
            Profile::Github => "GitHub".into(),
        }
    }
}
