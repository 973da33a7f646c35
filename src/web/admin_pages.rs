//! The administrators' console as HTML: plain tables and forms, no script. Everything shown
//! that a stranger could have written (client names, redirect URIs, client ids, audit
//! fields) is escaped; every form posts to one address with an `action` and the page's
//! token.

use std::collections::HashMap;

use serde_json::{Map, Value};

use super::pages::{escape, layout, when};
use crate::admin::audit_log::AuditFilter;
use crate::admin::{
    ClientSource, ClientSummary, GrantSelection, GrantSummary, KeyState, SigningKeySummary,
    UserSummary,
};
use crate::authorization::policy::RegistrationPolicy;
use crate::clock::Timestamp;
use crate::config::{DcrMode, RegistrationConfig};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    Users,
    Clients,
    Grants,
    Upstreams,
    Keys,
    Audit,
}

const SECTIONS: [Section; 6] = [
    Section::Users,
    Section::Clients,
    Section::Grants,
    Section::Upstreams,
    Section::Keys,
    Section::Audit,
];

impl Section {
    fn title(self) -> &'static str {
        match self {
            Self::Users => "Users",
            Self::Clients => "Clients",
            Self::Grants => "Grants",
            Self::Upstreams => "Upstreams",
            Self::Keys => "Signing keys",
            Self::Audit => "Audit log",
        }
    }

    /// The section's address under the browser path.
    pub fn url(self, base: &str) -> String {
        match self {
            Self::Users => format!("{base}/console/admin"),
            Self::Clients => format!("{base}/console/admin/clients"),
            Self::Grants => format!("{base}/console/admin/grants"),
            Self::Upstreams => format!("{base}/console/admin/upstreams"),
            Self::Keys => format!("{base}/console/admin/keys"),
            Self::Audit => format!("{base}/console/admin/audit"),
        }
    }

    /// The section an action belongs to (where it goes back to); `None`: no such action.
    pub fn of_action(action: &str) -> Option<Self> {
        Some(match action {
            "user_add" | "user_password" | "user_disable" | "user_enable" | "user_sessions_end" => {
                Self::Users
            }
            "client_block" | "client_unblock" | "client_approve" | "client_dismiss"
            | "registration_set" | "registration_reset" => Self::Clients,
            "grant_revoke" => Self::Grants,
            "key_rotate" | "key_retire" | "keys_reseal" => Self::Keys,
            _ => return None,
        })
    }
}

/// What a finished action says, by the code in `?done=`.
pub fn done_note(code: &str) -> Option<&'static str> {
    Some(match code {
        "disabled" => "The account was disabled; its sessions and grants ended.",
        "enabled" => "The account can sign in again.",
        "sessions_ended" => "The user was signed out of every browser.",
        "blocked" => "The client is blocked: its tokens, codes and grants ended.",
        "unblocked" => "The client is no longer blocked.",
        "approved" => "The client is approved: people can authorize it now.",
        "dismissed" => "The client is off the waiting list (it is listed again if it comes back).",
        "policy_set" => "The registration policy is in force (on every instance within seconds).",
        "policy_reset" => "The configuration file's registration policy is in force again.",
        "revoked" => "The grant and its tokens ended.",
        "nothing" => "That grant had ended already.",
        "rotated" => "A new signing key was made; it signs once every instance has published it.",
        "retired" => "The key was retired.",
        "resealed" => "Every signing key is sealed with the active encryption key.",
        _ => return None,
    })
}

pub struct Frame<'a> {
    pub base: &'a str,
    pub operator: &'a str,
    pub section: Section,
    pub note: Option<&'a str>,
    pub error: Option<&'a str>,
    pub body: &'a str,
}

/// The page around a section: navigation, the note or error of the last action.
pub fn frame(f: &Frame<'_>) -> String {
    let nav: Vec<String> = SECTIONS
        .iter()
        .map(|s| {
            if *s == f.section {
                format!("<strong>{}</strong>", s.title())
            } else {
                format!(r#"<a href="{}">{}</a>"#, escape(&s.url(f.base)), s.title())
            }
        })
        .collect();
    let note = f
        .note
        .map(|n| format!(r#"<p class="verified" role="status">{}</p>"#, escape(n)))
        .unwrap_or_default();
    let error = f
        .error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    layout(
        &format!("{} · administration", f.section.title()),
        &format!(
            r#"<h1>Administration: {title}</h1>
<p class="muted">Signed in as <strong>{who}</strong>. <a href="{base}/console">Your own access</a> · <a href="{base}/logout">Sign out</a></p>
<nav>{nav}</nav>
{note}{error}{body}"#,
            title = f.section.title(),
            who = escape(f.operator),
            base = escape(f.base),
            nav = nav.join(" · "),
            body = f.body,
        ),
    )
}

/// What every form needs.
pub struct Forms<'a> {
    pub base: &'a str,
    pub csrf: &'a str,
}

impl Forms<'_> {
    /// A one-button form for `action` with hidden fields.
    fn button(&self, action: &str, fields: &[(&str, &str)], label: &str) -> String {
        let hidden: String = fields
            .iter()
            .map(|(k, v)| {
                format!(
                    r#"<input type="hidden" name="{}" value="{}">"#,
                    escape(k),
                    escape(v)
                )
            })
            .collect();
        format!(
            r#"<form method="post" action="{base}/console/admin/do" class="inline"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="action" value="{action}">{hidden}<button type="submit">{label}</button></form>"#,
            base = escape(self.base),
            csrf = escape(self.csrf),
            label = escape(label),
        )
    }

    /// The opening of a form for `action` with fields of its own.
    fn open(&self, action: &str) -> String {
        format!(
            r#"<form method="post" action="{base}/console/admin/do"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="action" value="{action}">"#,
            base = escape(self.base),
            csrf = escape(self.csrf),
        )
    }
}

fn table(head: &[&str], rows: &str) -> String {
    let head: String = head.iter().map(|h| format!("<th>{h}</th>")).collect();
    format!("<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
}

/// A user as the users page shows them.
pub struct UserRow {
    pub user: UserSummary,
    /// The login sources they are linked to: (source, subject).
    pub identities: Vec<(String, String)>,
    pub administers: bool,
}

pub fn users(forms: &Forms<'_>, users: &[UserRow], operator: &str) -> String {
    let rows: String = users
        .iter()
        .map(|row| {
            let u = &row.user;
            let mut state = match u.disabled_at {
                Some(at) => format!(r#"<span class="error">disabled</span> {}"#, when(at)),
                None => "active".into(),
            };
            if row.administers {
                state.push_str(r#" <span class="verified">administrator</span>"#);
            }
            // How to name them in `[console] admins`: their name, or source:subject.
            let signs_in = if row.identities.is_empty() {
                "local account".to_string()
            } else {
                row.identities
                    .iter()
                    .map(|(source, subject)| format!("<code>{}:{}</code>", escape(source), escape(subject)))
                    .collect::<Vec<_>>()
                    .join("<br>")
            };
            let name = [("user", u.username.as_str())];
            let mut actions = String::new();
            if u.disabled_at.is_some() {
                actions.push_str(&forms.button("user_enable", &name, "Enable"));
            } else if u.username != operator {
                actions.push_str(&forms.button("user_disable", &name, "Disable"));
            }
            if row.identities.is_empty() {
                // Its page shows the new password as the answer to the POST: a reload would
                // send it again, so each button works once.
                let once = crate::crypto::new_id();
                actions.push_str(&forms.button(
                    "user_password",
                    &[("user", u.username.as_str()), ("once", once.as_str())],
                    "Reset password",
                ));
            }
            actions.push_str(&forms.button("user_sessions_end", &name, "End sessions"));
            format!(
                "<tr><td><strong>{name}</strong><br><span class=\"muted\">{signs_in}</span></td><td>{email}</td><td>{groups}</td><td>{since}</td><td>{state}</td><td>{actions}</td></tr>",
                name = escape(&u.username),
                email = u.email.as_deref().map(escape).unwrap_or_default(),
                groups = escape(&u.groups.join(" ")),
                since = when(u.created_at),
            )
        })
        .collect();
    format!(
        r#"{table}
<h2>Add a local account</h2>
{open}<label for="username">Username</label><input type="text" id="username" name="username" required>
<label for="email">Email (optional)</label><input type="text" id="email" name="email">
<label for="groups">Groups (optional, separated by spaces)</label><input type="text" id="groups" name="groups">
<button type="submit">Add</button></form>
<p class="muted">A password is made for the account and shown once. Reset password makes a new one the same way and ends what the old one allowed; people who sign in at an identity provider or a database have no password here.</p>"#,
        table = table(&["User", "Email", "Groups", "Since", "State", ""], &rows),
        open = forms.open("user_add"),
    )
}

/// What the clients page shows.
pub struct ClientsView<'a> {
    pub clients: &'a [ClientSummary],
    /// Client ids known only by their live grants.
    pub seen: &'a [String],
    pub blocked: &'a [(String, Timestamp, String)],
    pub approvals: &'a [crate::store::ClientApproval],
    pub policy: &'a RegistrationPolicy,
    /// Whether the policy is the configuration file's.
    pub configured: bool,
    pub registration: &'a RegistrationConfig,
}

pub fn clients(forms: &Forms<'_>, v: &ClientsView<'_>) -> String {
    let ClientsView {
        clients,
        seen,
        blocked,
        approvals,
        policy,
        configured,
        registration,
    } = *v;
    let is_blocked = |id: &str| blocked.iter().any(|(b, _, _)| b == id);
    let block_button = |id: &str| {
        if is_blocked(id) {
            r#"<span class="error">blocked</span>"#.to_string()
        } else {
            forms.button("client_block", &[("client", id)], "Block")
        }
    };
    let mut rows: String = clients
        .iter()
        .map(|c| {
            let uris: Vec<String> = c
                .redirect_uris
                .iter()
                .map(|u| format!("<code>{}</code>", escape(u)))
                .collect();
            format!(
                "<tr><td>{name}<br><code class=\"muted\">{id}</code></td><td>{source}</td><td>{uris}</td><td>{action}</td></tr>",
                name = c.name.as_deref().map(escape).unwrap_or_default(),
                id = escape(&c.client_id),
                source = match c.source {
                    ClientSource::Configured => "configured",
                    ClientSource::Registered => "registered (DCR)",
                },
                uris = uris.join("<br>"),
                action = block_button(&c.client_id),
            )
        })
        .collect();
    for id in seen {
        let source = if id.starts_with("https://") {
            "metadata document (CIMD)"
        } else {
            "no longer registered"
        };
        rows.push_str(&format!(
            "<tr><td><code class=\"muted\">{}</code></td><td>{source}</td><td></td><td>{}</td></tr>",
            escape(id),
            block_button(id)
        ));
    }
    let blocked_rows: String = blocked
        .iter()
        .map(|(id, at, reason)| {
            format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(id),
                when(*at),
                escape(reason),
                forms.button("client_unblock", &[("client", id)], "Unblock")
            )
        })
        .collect();
    let domains = if registration.cimd_trusted_domains.is_empty() {
        "none".to_string()
    } else {
        registration
            .cimd_trusted_domains
            .iter()
            .map(|d| format!("<code>{}</code>", escape(d)))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        r#"<p class="muted">Registered and configured clients, and clients known by the live grants they hold (a client that identifies itself by a metadata document is not stored).</p>
{clients}
{approvals}
<h2>Block a client</h2>
{open}<label for="client">Client id (or the URL of its metadata document)</label><input type="text" id="client" name="client" required>
<label for="reason">Reason (kept in the audit log)</label><input type="text" id="reason" name="reason">
<button type="submit">Block</button></form>
<h2>Blocked clients</h2>
{blocked}
<h2>Registration</h2>
{policy_open}<label for="dcr">Dynamic client registration</label><select id="dcr" name="dcr">{dcr_options}</select>
<label><input type="checkbox" name="cimd" value="1"{cimd_checked}> Accept Client ID Metadata Documents (a client named by the https URL of its document)</label>
<label><input type="checkbox" name="approve_new_clients" value="1"{approve_checked}> New registered and metadata document clients wait for an administrator's approval before anyone can authorize them</label>
<label for="cimd_allowed_domains">Accept metadata documents only from these domains (<code>example.com</code>, <code>*.example.com</code>; separated by spaces or lines; empty: any domain)</label><textarea id="cimd_allowed_domains" name="cimd_allowed_domains" rows="2">{allowed}</textarea>
<label for="cimd_blocked_domains">Refuse metadata documents from these domains</label><textarea id="cimd_blocked_domains" name="cimd_blocked_domains" rows="2">{blocked_domains}</textarea>
<button type="submit">Save</button></form>
{reset}
<p class="muted">{origin} Changes reach every instance within seconds. A client refused by a new rule gets no new authorization or token; access tokens it holds stay valid until they expire (block the client to end its grants at once). Metadata documents from these trusted domains may send errors back to the client: {domains}.</p>"#,
        policy_open = forms.open("registration_set"),
        dcr_options = [
            ("open", "open to anyone", DcrMode::Open),
            ("token", "with an initial access token", DcrMode::Token),
            ("off", "off", DcrMode::Off)
        ]
        .iter()
        .map(|(v, label, mode)| format!(
            r#"<option value="{v}"{}>{label}</option>"#,
            if *mode == policy.dcr { " selected" } else { "" }
        ))
        .collect::<String>(),
        cimd_checked = if policy.cimd { " checked" } else { "" },
        approve_checked = if policy.approve_new_clients {
            " checked"
        } else {
            ""
        },
        approvals = approvals_table(
            forms,
            approvals,
            clients,
            policy.approve_new_clients,
            &is_blocked
        ),
        allowed = escape(&policy.cimd_allowed_domains.join(" ")),
        blocked_domains = escape(&policy.cimd_blocked_domains.join(" ")),
        reset = if configured {
            String::new()
        } else {
            forms.button(
                "registration_reset",
                &[],
                "Go back to the configuration file's settings",
            )
        },
        origin = if configured {
            "In force: the configuration file's <code>[registration]</code>."
        } else {
            "In force: set by an administrator at run time (the configuration file's <code>[registration]</code> applies again after going back)."
        },
        clients = table(&["Client", "Kind", "Redirect URIs", ""], &rows),
        open = forms.open("client_block"),
        blocked = if blocked.is_empty() {
            r#"<p class="muted">No client is blocked.</p>"#.to_string()
        } else {
            table(&["Client", "Since", "Reason", ""], &blocked_rows)
        },
    )
}

/// At most this many clients waiting for approval are shown.
const MAX_WAITING_ROWS: usize = 200;

fn approvals_table(
    forms: &Forms<'_>,
    approvals: &[crate::store::ClientApproval],
    clients: &[ClientSummary],
    asked: bool,
    is_blocked: &dyn Fn(&str) -> bool,
) -> String {
    let waiting: Vec<&crate::store::ClientApproval> = approvals
        .iter()
        .filter(|a| a.approved_at.is_none() && !is_blocked(&a.client_id))
        .collect();
    if !asked && waiting.is_empty() {
        return String::new();
    }
    let rows: String = waiting
        .iter()
        .take(MAX_WAITING_ROWS)
        .map(|a| {
            // What tells a look-alike apart: where it sends people back to, or the host
            // that serves its document. The name is the client's own words.
            let whence = match clients.iter().find(|c| c.client_id == a.client_id) {
                Some(c) => c
                    .redirect_uris
                    .iter()
                    .map(|u| format!("<code>{}</code>", escape(u)))
                    .collect::<Vec<_>>()
                    .join("<br>"),
                None => url::Url::parse(&a.client_id)
                    .ok()
                    .and_then(|u| u.host_str().map(|h| format!("document on <strong>{}</strong>", escape(h))))
                    .unwrap_or_default(),
            };
            format!(
                "<tr><td>{name}<br><code class=\"muted\">{id}</code></td><td>{whence}</td><td>{since}</td><td>{approve}{dismiss}{block}</td></tr>",
                name = a
                    .client_name
                    .as_deref()
                    .map(|n| format!("“{}” <span class=\"muted\">(its own name)</span>", escape(n)))
                    .unwrap_or_default(),
                id = escape(&a.client_id),
                since = when(a.seen_at),
                approve = forms.button("client_approve", &[("client", &a.client_id)], "Approve"),
                dismiss = forms.button("client_dismiss", &[("client", &a.client_id)], "Dismiss"),
                block = forms.button("client_block", &[("client", &a.client_id)], "Block"),
            )
        })
        .collect();
    format!(
        r#"<h2>Waiting for approval</h2>{}
{}<label for="approve_client">Approve a client by id (or the URL of its metadata document), also before it asks</label><input type="text" id="approve_client" name="client" required>
<button type="submit">Approve</button></form>"#,
        if waiting.is_empty() {
            r#"<p class="muted">No client is waiting.</p>"#.to_string()
        } else {
            table(
                &["Client", "Sends people back to", "Asked first", ""],
                &rows,
            )
        },
        forms.open("client_approve"),
    )
}

/// At most this many grants are shown; filters narrow them.
const MAX_GRANT_ROWS: usize = 500;

pub fn grants(
    forms: &Forms<'_>,
    grants: &[GrantSummary],
    select: &GrantSelection,
    ended: bool,
) -> String {
    let rows: String = grants
        .iter()
        .take(MAX_GRANT_ROWS)
        .map(|g| {
            let state = match (g.ended_at, &g.ended_reason) {
                (Some(at), reason) => format!(
                    "ended {}{}",
                    when(at),
                    reason
                        .as_ref()
                        .map(|r| format!(" ({})", r.as_str()))
                        .unwrap_or_default()
                ),
                (None, _) => forms.button("grant_revoke", &[("grant", &g.id)], "Revoke"),
            };
            let scopes: Vec<String> = g.scopes.iter().map(|s| escape(s)).collect();
            format!(
                "<tr><td>{user}</td><td><code>{client}</code></td><td><code>{resource}</code></td><td>{scopes}</td><td>{since}</td><td>{state}</td></tr>",
                user = g.username.as_deref().map(escape).unwrap_or_else(|| "—".into()),
                client = escape(&g.client_id),
                resource = escape(&g.resource),
                scopes = scopes.join(" "),
                since = when(g.created_at),
            )
        })
        .collect();
    let more = if grants.len() > MAX_GRANT_ROWS {
        format!(
            r#"<p class="muted">{} more not shown: narrow by user or client.</p>"#,
            grants.len() - MAX_GRANT_ROWS
        )
    } else {
        String::new()
    };
    format!(
        r#"<form method="get" action="{action}"><label for="user">User</label><input type="text" id="user" name="user" value="{user}">
<label for="client">Client id</label><input type="text" id="client" name="client" value="{client}">
<label><input type="checkbox" name="ended" value="1"{checked}> Include ended grants</label>
<button type="submit">Show</button></form>
{table}{more}"#,
        action = escape(&Section::Grants.url(forms.base)),
        user = escape(select.user.as_deref().unwrap_or("")),
        client = escape(select.client.as_deref().unwrap_or("")),
        checked = if ended { " checked" } else { "" },
        table = if grants.is_empty() {
            r#"<p class="muted">No grant matches.</p>"#.to_string()
        } else {
            table(
                &["User", "Client", "Resource", "Scopes", "Since", ""],
                &rows,
            )
        },
    )
}

pub struct UpstreamRow {
    pub name: String,
    pub state: &'static str,
    pub seen: crate::proxy::health::UpstreamState,
}

pub fn upstreams(rows: &[UpstreamRow]) -> String {
    let rows: String = rows
        .iter()
        .map(|r| {
            let state = match r.state {
                "up" => r#"<span class="verified">reachable</span>"#.to_string(),
                "down" => r#"<span class="error">unreachable</span>"#.to_string(),
                "unknown" => "not used yet".into(),
                "built_in" => "built in".into(),
                "stdio" => "a local process".into(),
                other => escape(other),
            };
            let answer = match (r.seen.last_answer_at, r.seen.last_status) {
                (Some(at), Some(status)) => format!(
                    "{} (HTTP {status}, {} ms)",
                    when(at),
                    r.seen.last_latency_ms.unwrap_or(0)
                ),
                _ => "—".into(),
            };
            let error = match (r.seen.last_error_at, &r.seen.last_error) {
                (Some(at), Some(why)) => format!("{}: {}", when(at), escape(why)),
                _ => "—".into(),
            };
            format!(
                "<tr><td><strong>{}</strong></td><td>{state}</td><td>{answer}</td><td>{error}</td></tr>",
                escape(&r.name)
            )
        })
        .collect();
    format!(
        r#"{}<p class="muted">As this instance last saw them when forwarding requests; the same figures are in <code>/readyz</code> and the metrics.</p>"#,
        table(&["Upstream", "State", "Last answer", "Last failure"], &rows)
    )
}

pub fn keys(
    forms: &Forms<'_>,
    keys: &[SigningKeySummary],
    encryption: Option<(Vec<String>, String)>,
) -> String {
    let encryption = match encryption {
        None => r#"<p>No encryption key is configured: the signing keys' private halves are stored as they are (<code>[keys] encryption</code>).</p>"#.to_string(),
        Some((ids, active)) => {
            let items: Vec<String> = ids
                .iter()
                .map(|id| {
                    if *id == active {
                        format!(r#"<code>{}</code> <span class="verified">encrypts</span>"#, escape(id))
                    } else {
                        format!("<code>{}</code> (opens what it sealed)", escape(id))
                    }
                })
                .collect();
            format!("<p>Encryption keys: {}</p>", items.join(" · "))
        }
    };
    let rows: String = keys
        .iter()
        .map(|k| {
            let (state, retire) = match k.state {
                KeyState::SignsSoon => ("signs soon", true),
                KeyState::Signing => ("signing", false),
                KeyState::Verifies => ("verifies what it signed", true),
            };
            format!(
                "<tr><td><code>{kid}</code></td><td>{since}</td><td>{state}</td><td>{sealed}</td><td>{action}</td></tr>",
                kid = escape(&k.kid),
                since = when(k.created_at),
                sealed = k
                    .sealed_with
                    .as_deref()
                    .map(|s| format!("<code>{}</code>", escape(s)))
                    .unwrap_or_else(|| "not encrypted".into()),
                action = if retire && keys.len() > 1 {
                    forms.button("key_retire", &[("kid", &k.kid)], "Retire")
                } else {
                    String::new()
                },
            )
        })
        .collect();
    format!(
        r#"{table}
<p>{rotate} {reseal}</p>
<h2>Encryption keys</h2>
{encryption}
<p class="muted">A new key signs once every instance has published it. Retire a key after the tokens it signed have expired. To change the encryption key, add the new key to <code>[keys] encryption</code> first (it becomes the active one), restart, then re-encrypt here.</p>"#,
        table = table(&["Key id", "Made", "State", "Sealed with", ""], &rows),
        rotate = forms.button("key_rotate", &[], "Make a new signing key"),
        reseal = forms.button(
            "keys_reseal",
            &[],
            "Re-encrypt with the active encryption key"
        ),
    )
}

/// The fields shown in their own columns; the rest go to "Details".
const AUDIT_COLUMNS: [&str; 7] = ["ts", "action", "user", "user_id", "actor", "client", "flow"];

pub fn audit(
    base: &str,
    records: &[Map<String, Value>],
    filter: &AuditFilter,
    limit: usize,
) -> String {
    let here = Section::Audit.url(base);
    let link = |key: &str, value: &str| {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .append_pair(key, value)
            .finish();
        format!(
            r#"<a href="{}?{}"><code>{}</code></a>"#,
            escape(&here),
            escape(&q),
            escape(value)
        )
    };
    let text =
        |r: &Map<String, Value>, k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
    let rows: String = records
        .iter()
        .map(|r| {
            let who = ["user", "user_id", "actor"]
                .iter()
                .filter_map(|k| text(r, k))
                .map(|v| link("user", &v))
                .collect::<Vec<_>>()
                .join(" ");
            let details: HashMap<&String, &Value> = r
                .iter()
                .filter(|(k, _)| !AUDIT_COLUMNS.contains(&k.as_str()))
                .collect();
            let mut details: Vec<(&String, &Value)> = details.into_iter().collect();
            details.sort_by(|a, b| a.0.cmp(b.0));
            let details: Vec<String> = details
                .iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    format!("{}={}", escape(k), escape(&v))
                })
                .collect();
            format!(
                "<tr><td>{ts}</td><td>{action}</td><td>{who}</td><td>{client}</td><td>{flow}</td><td class=\"muted\">{details}</td></tr>",
                ts = escape(&text(r, "ts").unwrap_or_default()),
                action = text(r, "action").map(|a| link("action", &a)).unwrap_or_default(),
                client = text(r, "client").map(|c| link("client", &c)).unwrap_or_default(),
                flow = text(r, "flow").map(|f| link("flow", &f)).unwrap_or_default(),
                details = details.join("<br>"),
            )
        })
        .collect();
    let field = |name: &str, label: &str, value: &Option<String>| {
        format!(
            r#"<label for="{name}">{label}</label><input type="text" id="{name}" name="{name}" value="{}">"#,
            escape(value.as_deref().unwrap_or(""))
        )
    };
    format!(
        r#"<form method="get" action="{here}">{action}{user}{client}{flow}<input type="hidden" name="limit" value="{limit}"><button type="submit">Show</button> <a href="{here}">Clear</a></form>
{table}
<p class="muted">The newest {limit} matching records, newest first, from the end of this instance's audit file. Each field matches exactly; a person is matched as the user, the user id or who acted. <code>flow</code> ties one client's authorization, tokens and refreshes together.</p>"#,
        here = escape(&here),
        action = field("action", "Action (e.g. token_issued)", &filter.action),
        user = field("user", "User, user id or actor", &filter.user),
        client = field("client", "Client id", &filter.client),
        flow = field("flow", "Flow", &filter.flow),
        limit = limit.clamp(1, crate::admin::audit_log::MAX_RECORDS),
        table = if records.is_empty() {
            r#"<p class="muted">No record matches.</p>"#.to_string()
        } else {
            table(
                &["Time", "Action", "Who", "Client", "Flow", "Details"],
                &rows,
            )
        },
    )
}

/// A password made for an account, shown this once.
pub fn password_once(base: &str, user: &str, password: &str) -> String {
    format!(
        r#"<p class="verified" role="status">The password of <strong>{}</strong> is set.</p>
<p>Give it to them through a channel you trust; it is not shown again, and they can change it with the command line or ask for another.</p>
<p><code class="usercode">{}</code></p>
<p><a href="{}">Back to the users</a></p>"#,
        escape(user),
        escape(password),
        escape(&Section::Users.url(base)),
    )
}

/// A link back to a section, under an error.
pub fn back(base: &str, section: Section) -> String {
    format!(
        r#"<p><a href="{}">Back to {}</a></p>"#,
        escape(&section.url(base)),
        section.title().to_lowercase()
    )
}
