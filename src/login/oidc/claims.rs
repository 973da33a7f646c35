//! From what a provider says about a person to who they are here, and whether they may sign
//! in: pure functions over the verified claims.

use serde_json::{Map, Value};

use super::config::{Profile, Settings};

/// The person as the provider described them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Person {
    /// Stable at the provider (`sub`; GitHub's numeric user id), never an e-mail address.
    pub subject: String,
    pub username: String,
    /// Only an address the provider says it verified.
    pub email: Option<String>,
    pub groups: Vec<String>,
    /// Google: the Workspace domain the account belongs to (`hd`), if any.
    pub hosted_domain: Option<String>,
}

/// Why the claims do not make a person who may sign in. The text is shown to them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the provider's answer names nobody (no usable `sub`)")]
    NoSubject,
    #[error("your account is not in the organisation this server accepts ({0})")]
    WrongHostedDomain(String),
    #[error("your account is not on this server's list of who may sign in")]
    NotAllowed,
}

/// `email_verified` is a boolean in the standard and a string at some providers.
fn verified(claims: &Map<String, Value>) -> bool {
    match claims.get("email_verified") {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s.eq_ignore_ascii_case("true"),
        _ => false,
    }
}

fn text<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims
        .get(name)
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// Groups from an array of strings (or one string); anything else is no groups.
pub fn groups_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .take(1000)
            .collect(),
        Some(Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

/// The person an OpenID provider's claims describe (ID token, with userinfo's added).
pub fn person(settings: &Settings, claims: &Map<String, Value>) -> Result<Person, Refusal> {
    let subject = text(claims, "sub")
        .filter(|s| s.len() <= 255 && !s.chars().any(char::is_control))
        .ok_or(Refusal::NoSubject)?
        .to_string();
    let email = text(claims, "email")
        .filter(|_| verified(claims))
        .map(str::to_ascii_lowercase);
    // Whole, even when it is an address: two people's local parts at different domains
    // must not make one name (a tool rule written for one would apply to the other).
    let username = text(claims, &settings.username_claim)
        .unwrap_or_default()
        .to_string();
    let groups = settings
        .groups_claim
        .as_deref()
        .map(|c| groups_of(claims.get(c)))
        .unwrap_or_default();
    if let Some(hd) = &settings.hosted_domain {
        // Google's `hd` is the Workspace domain of the account; the hint in the request can
        // be edited by the person, the claim in the signed token cannot.
        if text(claims, "hd").map(str::to_ascii_lowercase).as_deref() != Some(hd.as_str()) {
            return Err(Refusal::WrongHostedDomain(hd.clone()));
        }
    }
    Ok(Person {
        subject,
        username,
        email,
        groups,
        hosted_domain: text(claims, "hd").map(str::to_ascii_lowercase),
    })
}

/// Whether the allow-list lets this person in. `orgs` are GitHub memberships
/// (`org` and `org/team`, lower-cased).
pub fn allowed(settings: &Settings, person: &Person, orgs: &[String]) -> Result<(), Refusal> {
    let allow = &settings.allow;
    if allow.is_open() {
        return Ok(());
    }
    let by_email = person.email.as_deref().is_some_and(|e| {
        allow.emails.iter().any(|a| a == e)
            || e.rsplit_once('@').is_some_and(|(_, d)| {
                // Google verifies a non-Gmail address once, when the account is made: only
                // the Workspace domain (`hd`) says the domain vouches for it today.
                let vouched = settings.profile != Profile::Google
                    || person.hosted_domain.as_deref() == Some(d);
                vouched && allow.domains.iter().any(|a| a == d)
            })
    });
    let by_group = person.groups.iter().any(|g| allow.groups.contains(g));
    let by_org = orgs.iter().any(|o| allow.orgs.contains(o));
    if by_email || by_group || by_org {
        Ok(())
    } else {
        Err(Refusal::NotAllowed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::login::oidc::config::OidcConfig;
    use serde_json::json;

    fn settings(extra: &str) -> Settings {
        let text = format!(
            "name = \"corp\"\nissuer = \"https://id.example.com\"\nclient_id = \"c\"\nclient_secret = \"s\"\n{extra}"
        );
        toml::from_str::<OidcConfig>(&text)
            .expect("config")
            .resolve(0)
            .expect("valid")
    }

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().expect("object").clone()
    }

    #[test]
    fn the_subject_is_sub_and_only_a_verified_address_counts() {
        let s = settings("");
        let p = person(
            &s,
            &claims(
                json!({"sub": "u1", "email": "A@Example.com", "email_verified": true,
                "preferred_username": "ann@example.com", "groups": ["staff", 7]}),
            ),
        )
        .expect("person");
        assert_eq!(p.subject, "u1");
        assert_eq!(p.email.as_deref(), Some("a@example.com"));
        assert_eq!(p.username, "ann@example.com");
        assert_eq!(p.groups, vec!["staff".to_string()]);
        let unverified = person(
            &s,
            &claims(json!({"sub": "u1", "email": "a@example.com", "email_verified": false})),
        )
        .expect("person");
        assert_eq!(unverified.email, None);
        let absent =
            person(&s, &claims(json!({"sub": "u1", "email": "a@example.com"}))).expect("person");
        assert_eq!(absent.email, None, "no email_verified is not verified");
        assert_eq!(
            person(&s, &claims(json!({"email": "a@example.com"}))),
            Err(Refusal::NoSubject)
        );
        assert_eq!(
            person(&s, &claims(json!({"sub": 5}))),
            Err(Refusal::NoSubject)
        );
        assert_eq!(
            person(&s, &claims(json!({"sub": "a\nb"}))),
            Err(Refusal::NoSubject)
        );
    }

    #[test]
    fn allow_lists_match_address_domain_or_group_and_nothing_else() {
        let s = settings(
            "allowed_emails = [\"Boss@Other.org\"]\nallowed_domains = [\"@example.com\"]\nallowed_groups = [\"admins\"]",
        );
        let who = |email: Option<&str>, groups: &[&str]| Person {
            subject: "x".into(),
            username: "x".into(),
            email: email.map(str::to_string),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            hosted_domain: None,
        };
        assert!(allowed(&s, &who(Some("ann@example.com"), &[]), &[]).is_ok());
        assert!(allowed(&s, &who(Some("boss@other.org"), &[]), &[]).is_ok());
        assert!(allowed(&s, &who(None, &["admins"]), &[]).is_ok());
        for (email, groups) in [
            (Some("ann@example.com.evil.org"), vec![]),
            (Some("ann@sub.example.com"), vec![]),
            (Some("other@other.org"), vec!["Admins"]),
            (None, vec!["staff"]),
        ] {
            assert_eq!(
                allowed(&s, &who(email, &groups), &[]),
                Err(Refusal::NotAllowed),
                "{email:?} {groups:?}"
            );
        }
        let open = settings("");
        assert!(allowed(&open, &who(None, &[]), &[]).is_ok());
    }

    #[test]
    fn googles_hosted_domain_is_checked_in_the_token() {
        let text = "name = \"g\"\nprovider = \"google\"\nclient_id = \"c\"\nclient_secret = \"s\"\nhosted_domain = \"Example.com\"";
        let s = toml::from_str::<OidcConfig>(text)
            .expect("config")
            .resolve(0)
            .expect("valid");
        assert!(
            s.extra_params
                .contains(&("hd".into(), "example.com".into()))
        );
        assert!(person(&s, &claims(json!({"sub": "1", "hd": "example.com"}))).is_ok());
        assert!(matches!(
            person(&s, &claims(json!({"sub": "1", "hd": "evil.com"}))),
            Err(Refusal::WrongHostedDomain(_))
        ));
        assert!(matches!(
            person(&s, &claims(json!({"sub": "1"}))),
            Err(Refusal::WrongHostedDomain(_))
        ));
    }

    #[test]
    fn a_google_address_counts_for_a_domain_only_with_that_workspace_domain() {
        let text = "name = \"g\"\nprovider = \"google\"\nclient_id = \"c\"\nclient_secret = \"s\"\nallowed_domains = [\"corp.com\"]";
        let s = toml::from_str::<OidcConfig>(text)
            .expect("config")
            .resolve(0)
            .expect("valid");
        let verified = |hd: Option<&str>| {
            let mut c = json!({"sub": "1", "email": "ex@corp.com", "email_verified": true});
            if let Some(hd) = hd {
                c["hd"] = json!(hd);
            }
            person(&s, &claims(c)).expect("person")
        };
        assert!(allowed(&s, &verified(Some("corp.com")), &[]).is_ok());
        assert_eq!(
            allowed(&s, &verified(None), &[]),
            Err(Refusal::NotAllowed),
            "a consumer account on a corp.com address"
        );
    }

    #[test]
    fn profiles_fill_in_what_the_operator_leaves_out() {
        let resolve = |text: &str| {
            toml::from_str::<OidcConfig>(&format!(
                "name = \"p\"\nclient_id = \"c\"\nclient_secret = \"s\"\n{text}"
            ))
            .expect("config")
            .resolve(0)
        };
        let entra = resolve("provider = \"entra\"\ntenant = \"72f988bf-86f1-41af-91ab-2d7cd011db47\"\nkeep_provider_tokens = true")
            .expect("entra");
        assert_eq!(
            entra.issuer,
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
        );
        assert!(entra.scopes.contains(&"offline_access".to_string()));
        assert!(!entra.extra_params.iter().any(|(k, _)| k == "resource"));
        assert!(
            resolve("provider = \"entra\"\ntenant = \"organizations\"")
                .expect("multi-tenant")
                .tenant_in_issuer
        );
        let auth0 = resolve(
            "provider = \"auth0\"\ndomain = \"t.eu.auth0.com\"\naudience = \"https://api\"",
        )
        .expect("auth0");
        assert_eq!(auth0.issuer, "https://t.eu.auth0.com/");
        assert!(
            auth0
                .extra_params
                .contains(&("audience".into(), "https://api".into()))
        );
        let google = resolve("provider = \"google\"\nkeep_provider_tokens = true").expect("google");
        assert!(
            google
                .extra_params
                .contains(&("access_type".into(), "offline".into()))
        );
        assert!(
            google
                .extra_params
                .contains(&("prompt".into(), "consent".into()))
        );
        let github =
            resolve("provider = \"github\"\nallowed_orgs = [\"Acme/Platform\"]").expect("github");
        let gh = github.github.expect("urls");
        assert_eq!(gh.api.as_str(), "https://api.github.com/");
        assert!(github.scopes.contains(&"read:org".to_string()));
        assert_eq!(github.allow.orgs, vec!["acme/platform".to_string()]);
        let ghes =
            resolve("provider = \"github\"\nweb_url = \"https://git.example.com\"").expect("ghes");
        assert_eq!(
            ghes.github.expect("urls").api.as_str(),
            "https://git.example.com/api/v3/"
        );
        // What does not apply, or is missing, is named.
        for (text, key) in [
            ("provider = \"oidc\"", "login.oidc[0].issuer"),
            ("provider = \"keycloak\"", "login.oidc[0].issuer"),
            ("provider = \"entra\"", "login.oidc[0].tenant"),
            (
                "provider = \"entra\"\ntenant = \"contoso.onmicrosoft.com\"",
                "login.oidc[0].tenant",
            ),
            (
                "provider = \"entra\"\ntenant = \"organizations\"\nallowed_domains = [\"corp.com\"]",
                "login.oidc[0].allowed_domains",
            ),
            ("provider = \"auth0\"", "login.oidc[0].domain"),
            (
                "provider = \"google\"\nallowed_groups = [\"x\"]",
                "login.oidc[0].allowed_groups",
            ),
            (
                "provider = \"google\"\ntenant = \"x\"",
                "login.oidc[0].tenant",
            ),
            ("issuer = \"http://id.example.com\"", "login.oidc[0].issuer"),
            (
                "issuer = \"https://id.example.com\"\nscopes = [\"email\"]",
                "login.oidc[0].scopes",
            ),
            (
                "issuer = \"https://id.example.com\"\nallowed_orgs = [\"a\"]",
                "login.oidc[0].allowed_orgs",
            ),
            (
                "provider = \"github\"\nallowed_orgs = [\"a/b/c\"]",
                "login.oidc[0].allowed_orgs",
            ),
            (
                "issuer = \"https://id.example.com\"\nclock_skew_secs = 3600",
                "login.oidc[0].clock_skew_secs",
            ),
        ] {
            assert_eq!(resolve(text).expect_err(text).0, key, "{text}");
        }
        assert!(
            resolve("issuer = \"http://127.0.0.1:9000\"")
                .expect("loopback")
                .allow_http_loopback
        );
    }
}
