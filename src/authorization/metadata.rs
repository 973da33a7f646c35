//! RFC 8414 authorization server metadata and RFC 9728 protected resource metadata.

use serde_json::{Value, json};

use super::{AuthorizationServer, Resource};
use crate::config::DcrMode;

impl AuthorizationServer {
    pub fn endpoint(&self, path: &str) -> String {
        format!("{}{}", self.settings.issuer, path)
    }

    pub fn server_metadata(&self) -> Value {
        let s = &self.settings;
        // As this instance last read it: the handler reads it first.
        let policy = self.policy.last();
        let mut m = json!({
            "issuer": s.issuer,
            "authorization_endpoint": self.endpoint("/authorize"),
            "token_endpoint": self.endpoint("/token"),
            "revocation_endpoint": self.endpoint("/revoke"),
            "introspection_endpoint": self.endpoint("/introspect"),
            "scopes_supported": s.scopes,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials", super::device::DEVICE_CODE],
            "device_authorization_endpoint": self.endpoint("/device_authorization"),
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic", "client_secret_post"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "authorization_response_iss_parameter_supported": true,
            "client_id_metadata_document_supported": policy.cimd,
            // Keys of the identity assertions sent to upstreams.
            "jwks_uri": self.endpoint("/.well-known/jwks.json"),
        });
        if policy.dcr != DcrMode::Off
            && let Value::Object(o) = &mut m
        {
            o.insert(
                "registration_endpoint".into(),
                json!(self.endpoint("/register")),
            );
        }
        // Enterprise-managed authorization, when an identity provider is trusted for it.
        if !self.id_jag.is_empty()
            && let Value::Object(o) = &mut m
        {
            if let Some(Value::Array(g)) = o.get_mut("grant_types_supported") {
                g.push(json!(super::id_jag::JWT_BEARER));
            }
            o.insert(
                "authorization_grant_profiles_supported".into(),
                json!([super::id_jag::ID_JAG_PROFILE]),
            );
        }
        m
    }

    pub fn resource_metadata(&self, r: &Resource) -> Value {
        json!({
            "resource": r.url,
            "authorization_servers": match &self.external {
                Some((_, issuers)) => json!(issuers),
                None => json!([self.settings.issuer]),
            },
            "scopes_supported": r.scopes,
            "bearer_methods_supported": ["header"],
            "resource_name": r.name,
        })
    }

    /// The RFC 9728 URL of a resource's metadata: the well-known segment inserted before the
    /// resource's path.
    pub fn resource_metadata_url(&self, r: &Resource) -> String {
        let origin_end = self
            .settings
            .issuer
            .len()
            .saturating_sub(self.settings.base_path.len());
        let origin = &self.settings.issuer[..origin_end];
        format!("{origin}/.well-known/oauth-protected-resource{}", r.path)
    }
}
