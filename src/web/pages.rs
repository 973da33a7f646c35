//! The few HTML pages a person sees: login, consent, and errors. Plain forms, no script, so
//! that a headless client can drive them. Field names are documented in docs/configuration.md.

use crate::authorization::authorize::PageContext;
use crate::login::SourceKind;

pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

pub(super) fn layout(title: &str, body: &str) -> String {
    format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body{{font-family:system-ui,sans-serif;background:#f4f5f7;margin:0;padding:2rem 1rem;color:#1d2330}}
main{{max-width:26rem;margin:0 auto;background:#fff;border-radius:8px;padding:1.5rem 1.75rem;box-shadow:0 1px 4px #0002}}
h1{{font-size:1.25rem;margin-top:0}} label{{display:block;margin:.75rem 0 .25rem}}
input[type=text],input[type=password],textarea,select{{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}}
form.inline{{display:inline-block;margin:0 .3rem .3rem 0}} nav{{margin:.75rem 0}}
button{{padding:.55rem 1.1rem;font-size:1rem;margin-top:1rem;margin-right:.5rem;cursor:pointer}}
.error{{background:#fdecec;color:#8a1c1c;padding:.5rem .75rem;border-radius:4px}}
.muted{{color:#5c6370;font-size:.9rem}} .verified{{color:#11734b;font-weight:600}}
code{{background:#f0f1f3;padding:0 .25rem;border-radius:3px;word-break:break-all}}
.usercode{{white-space:nowrap;word-break:normal;font-size:1.05rem}}
main:has(table){{max-width:64rem}} h2{{font-size:1.05rem;margin-top:1.5rem}}
table{{border-collapse:collapse;width:100%;font-size:.9rem}} td,th{{border-bottom:1px solid #e3e5e8;padding:.4rem;text-align:left;vertical-align:top}}
td button{{margin-top:0;padding:.3rem .7rem;font-size:.9rem}}
</style></head><body><main>
{body}
</main></body></html>"#,
        title = escape(title),
        body = body
    )
}

fn client_label(ctx: &PageContext) -> String {
    match &ctx.client_name {
        Some(n) if !n.is_empty() => escape(n),
        _ => format!("<code>{}</code>", escape(&ctx.client_id)),
    }
}

fn name_warning(ctx: &PageContext) -> &'static str {
    if ctx.name_mixes_scripts {
        r#"<p class="error" role="alert">This application's name mixes letters of different alphabets, a way to imitate the name of another application. Go on only if you expected it.</p>"#
    } else {
        ""
    }
}

/// The sign-in page: one form per login source, under a heading each when there are
/// several (the chooser). A password source gets its username and password fields; a source
/// that redirects gets a button that starts its leg.
pub fn login(ctx: &PageContext, action: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    let several = ctx.sources.len() > 1;
    let forms: String = ctx
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let heading = if several {
                format!("<h2>{}</h2>\n", escape(&s.label))
            } else {
                String::new()
            };
            let hidden = format!(
                r#"<input type="hidden" name="request" value="{handle}">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="source" value="{source}">"#,
                handle = escape(&ctx.handle),
                csrf = escape(&ctx.csrf),
                source = escape(&s.name),
            );
            match s.kind {
                SourceKind::Password => {
                    // The first form's fields keep their plain ids (and the focus).
                    let (user_id, pw_id, focus) = if i == 0 {
                        ("username".to_string(), "password".to_string(), " autofocus")
                    } else {
                        (format!("username-{i}"), format!("password-{i}"), "")
                    };
                    format!(
                        r#"{heading}<form method="post" action="{action}">
{hidden}
<label for="{user_id}">Username</label>
<input type="text" id="{user_id}" name="username" autocomplete="username" required{focus}>
<label for="{pw_id}">Password</label>
<input type="password" id="{pw_id}" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>
"#,
                        action = escape(action),
                    )
                }
                SourceKind::Redirect => format!(
                    r#"{heading}<form method="post" action="{action}/{name}">
{hidden}
<button type="submit">Continue with {label}</button>
</form>
"#,
                    action = escape(action),
                    name = escape(&s.name),
                    label = escape(&s.label),
                ),
            }
        })
        .collect();
    let choose = if several {
        "<p>Choose how to sign in.</p>\n"
    } else {
        ""
    };
    layout(
        "Sign in",
        &format!(
            r#"<h1>Sign in</h1>
<p><strong>{client}</strong> wants to connect to your account.</p>
{warning}{error}
{choose}{forms}"#,
            client = client_label(ctx),
            warning = name_warning(ctx),
        ),
    )
}

pub fn consent(ctx: &PageContext, action: &str) -> String {
    let verified = match &ctx.verified_domain {
        Some(d) => format!(
            r#"<p class="verified">&#10003; Verified domain: {}</p>"#,
            escape(d)
        ),
        None => r#"<p class="muted">This client registered itself; its name is not verified.</p>"#
            .into(),
    };
    let scopes: String = ctx
        .scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", escape(s)))
        .collect();
    layout(
        "Allow access?",
        &format!(
            r#"<h1>Allow access?</h1>
<p><strong>{client}</strong> asks to use <code>{resource}</code>{as_user}.</p>
{warning}{verified}
{via}<p>After you decide, you will be sent to <strong>{host}</strong>.</p>
<p>It asks for:</p><ul>{scopes}</ul>
<form method="post" action="{action}">
<input type="hidden" name="request" value="{handle}">
<input type="hidden" name="csrf" value="{csrf}">
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>
<p class="muted">Client ID: <code>{client_id}</code></p>"#,
            client = client_label(ctx),
            warning = name_warning(ctx),
            resource = escape(&ctx.resource),
            as_user = ctx
                .username
                .as_deref()
                .map(|u| format!(" as <strong>{}</strong>", escape(u)))
                .unwrap_or_default(),
            host = escape(&ctx.redirect_host),
            via = ctx
                .via
                .as_ref()
                .map(|s| format!(
                    "<p>If you allow it, you will sign in with <strong>{}</strong> next, and the access goes to whoever signs in there.</p>\n",
                    escape(&s.label)
                ))
                .unwrap_or_default(),
            action = escape(action),
            handle = escape(&ctx.handle),
            csrf = escape(&ctx.csrf),
            client_id = escape(&ctx.client_id),
        ),
    )
}

pub fn error(message: &str) -> String {
    layout(
        "Request stopped",
        &format!(
            r#"<h1>This request cannot continue</h1><p class="error" role="alert">{}</p>"#,
            escape(message)
        ),
    )
}

/// An authorization request stopped before sign-in, for a client nobody vouches for: the
/// person sees why, and where the link back would take them.
pub fn stopped(message: &str, redirect_host: &str, back: &str) -> String {
    layout(
        "Request stopped",
        &format!(
            r#"<h1>This request cannot continue</h1><p class="error" role="alert">{message}</p>
<p>The application that sent you here asked to be answered at <strong>{host}</strong>. This server does not vouch for it, so you are not sent there automatically.</p>
<p><a href="{back}" rel="noreferrer">Return to {host}</a></p>"#,
            message = escape(message),
            host = escape(redirect_host),
            back = escape(back),
        ),
    )
}

pub fn logout(action: &str, signed_in: bool) -> String {
    let body = if signed_in {
        format!(
            r#"<h1>Sign out</h1><p>Sign this browser out of the gateway? Applications you connected keep working; an administrator can revoke them.</p>
<form method="post" action="{}"><button type="submit">Sign out</button></form>"#,
            escape(action)
        )
    } else {
        "<h1>Signed out</h1><p>This browser is not signed in.</p>".to_string()
    };
    layout("Sign out", &body)
}

/// The gateway's own sign-in (for its pages, not for an application): password sources.
pub fn sign_in(
    sources: &[(String, String)],
    action: &str,
    csrf: &str,
    error: Option<&str>,
) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    let forms: String = sources
        .iter()
        .map(|(name, label)| {
            format!(
                r#"<h2>{label}</h2>
<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="source" value="{name}">
<label for="u-{name}">Username</label><input type="text" id="u-{name}" name="username" autocomplete="username" required>
<label for="p-{name}">Password</label><input type="password" id="p-{name}" name="password" autocomplete="current-password" required>
<button type="submit">Sign in</button>
</form>"#,
                label = escape(label),
                name = escape(name),
                action = escape(action),
                csrf = escape(csrf),
            )
        })
        .collect();
    let body = if sources.is_empty() {
        "<p>Sign in through your MCP application first (this gateway's sign-in is at your identity provider), then come back here in the same browser.</p>".to_string()
    } else {
        forms
    };
    layout(
        "Sign in",
        &format!("<h1>Sign in to the gateway</h1>\n{error}{body}"),
    )
}

/// The confirmation before a connect flow: which upstream, at which authorization server,
/// with which scopes.
pub fn connect(
    plan: &crate::broker::service::ConnectPlan,
    action: &str,
    csrf: &str,
    more_scope: Option<&str>,
    then: Option<(&str, &str, &str)>,
) -> String {
    let scopes: String = plan
        .scope
        .split(' ')
        .filter(|s| !s.is_empty())
        .map(|s| format!("<li><code>{}</code></li>", escape(s)))
        .collect();
    let more = more_scope
        .map(|s| {
            format!(
                r#"<input type="hidden" name="scope" value="{}">"#,
                escape(s)
            )
        })
        .unwrap_or_default();
    // Right after consenting to a client: the client's code waits for this, and the person
    // may go on without connecting.
    let (waiting, skip) = match then {
        Some((request, then_csrf, consent_action)) => (
            format!(
                r#"<input type="hidden" name="then_request" value="{r}"><input type="hidden" name="then_csrf" value="{c}">"#,
                r = escape(request),
                c = escape(then_csrf)
            ),
            format!(
                r#"<form method="post" action="{a}"><input type="hidden" name="request" value="{r}"><input type="hidden" name="csrf" value="{c}"><input type="hidden" name="connect" value="later"><button type="submit" name="decision" value="allow">Not now: continue to the application</button></form>"#,
                a = escape(consent_action),
                r = escape(request),
                c = escape(then_csrf)
            ),
        ),
        None => (String::new(), String::new()),
    };
    layout(
        "Connect an account",
        &format!(
            r#"<h1>Connect your account at {name}</h1>
<p>The gateway will call <code>{url}</code> for you with your own account there. You sign in at its authorization server, <strong>{issuer}</strong>, next.</p>
<p>It asks for:</p><ul>{scopes}</ul>
<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}">{more}{waiting}
<button type="submit">Connect</button>
</form>
{skip}
<p class="muted">Started this yourself? If you did not expect this page, close it.</p>"#,
            name = escape(&plan.upstream),
            url = escape(&plan.upstream_url),
            issuer = escape(&plan.issuer),
            action = escape(action),
            csrf = escape(csrf),
        ),
    )
}

/// Every OAuth upstream and this person's connection to it.
pub fn connections(
    list: &[crate::broker::ConnectionStatus],
    base: &str,
    csrf: &str,
    note: Option<&str>,
) -> String {
    let note = note
        .map(|n| format!(r#"<p class="verified" role="status">{}</p>"#, escape(n)))
        .unwrap_or_default();
    let rows: String = list
        .iter()
        .map(|c| {
            let name = escape(&c.upstream);
            let state = match c.state {
                "connected" => "Connected",
                "expired" => "Expired",
                "broken" => "Needs reconnecting",
                _ => "Not connected",
            };
            let connect = format!(
                r#"<a href="{base}/connect/{name}">{}</a>"#,
                if c.state == "not_connected" { "Connect" } else { "Reconnect" },
                base = escape(base),
            );
            let disconnect = if c.state == "not_connected" {
                String::new()
            } else {
                format!(
                    r#"<form method="post" action="{base}/connections/{name}/disconnect" style="display:inline">
<input type="hidden" name="csrf" value="{csrf}"><button type="submit">Disconnect</button></form>"#,
                    base = escape(base),
                    csrf = escape(csrf),
                )
            };
            format!(
                "<li><strong>{name}</strong>: <span class=\"state\">{state}</span>{scope} {connect} {disconnect}</li>\n",
                scope = c
                    .scope
                    .as_deref()
                    .map(|s| format!(" <span class=\"muted\">({})</span>", escape(s)))
                    .unwrap_or_default(),
            )
        })
        .collect();
    layout(
        "Connections",
        &format!("<h1>Your connections</h1>\n{note}<ul>{rows}</ul>"),
    )
}

pub fn connected(upstream: &str, connections: &str) -> String {
    layout(
        "Connected",
        &format!(
            r#"<h1>Connected</h1><p class="verified">Your account at <strong>{}</strong> is connected. Go back to your application and try again.</p>
<p><a href="{}">Your connections</a></p>"#,
            escape(upstream),
            escape(connections)
        ),
    )
}

/// "Authorize a device": the form where a signed-in person types the code a device shows.
pub fn device_entry(action: &str, csrf: &str, typed: &str, error: Option<&str>) -> String {
    let error = error
        .map(|e| format!(r#"<p class="error" role="alert">{}</p>"#, escape(e)))
        .unwrap_or_default();
    layout(
        "Authorize a device",
        &format!(
            r#"<h1>Authorize a device</h1>
<p>Enter the code your device or command-line tool shows.</p>
{error}<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}">
<label for="user_code">Code</label>
<input type="text" id="user_code" name="user_code" value="{typed}" autocomplete="off" autocapitalize="characters" spellcheck="false" required autofocus>
<button type="submit">Continue</button>
</form>
<p class="muted">Only enter a code you started yourself. Nobody from this service will ask you for one.</p>"#,
            action = escape(action),
            csrf = escape(csrf),
            typed = escape(typed),
        ),
    )
}

/// The consent for a waiting device: the same facts as the browser flow's consent page.
pub fn device_consent(
    d: &crate::authorization::device::DeviceRequest,
    action: &str,
    csrf: &str,
) -> String {
    let client = match &d.client_name {
        Some(n) if !n.is_empty() => escape(n),
        _ => format!("<code>{}</code>", escape(&d.client_id)),
    };
    let verified = if d.verified {
        r#" <span class="verified">(verified)</span>"#
    } else {
        r#" <span class="muted">(its name is its own claim)</span>"#
    };
    let scopes: String = d
        .scopes
        .iter()
        .map(|s| format!("<li><code>{}</code></li>", escape(s)))
        .collect();
    layout(
        "Authorize a device",
        &format!(
            r#"<h1>Allow {client} on your device?</h1>
<p>{client}{verified} (<code>{client_id}</code>) is asking for access to <strong>{resource_name}</strong> (<code>{resource}</code>) as you, from the device showing the code <strong><code class="usercode">{code}</code></strong>.</p>
<p>It asks for:</p><ul>{scopes}</ul>
<p class="error">Allow only if you started this on your own device and it shows this code. Someone who sent you this code could be trying to get your access.</p>
<form method="post" action="{action}">
<input type="hidden" name="csrf" value="{csrf}">
<input type="hidden" name="user_code" value="{code}">
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button>
</form>"#,
            client_id = escape(&d.client_id),
            resource_name = escape(&d.resource_name),
            resource = escape(&d.resource),
            code = escape(&d.user_code),
            action = escape(action),
            csrf = escape(csrf),
        ),
    )
}

/// After the decision.
pub fn device_done(approved: bool) -> String {
    let text = if approved {
        "The device is allowed. Go back to it: it continues on its own."
    } else {
        "The device was refused. It gets no access."
    };
    layout(
        "Authorize a device",
        &format!(r#"<h1>Done</h1><p class="verified" role="status">{text}</p>"#),
    )
}

/// What the console page shows a signed-in person.
pub struct ConsoleView<'a> {
    pub username: String,
    /// The browser path (`…/authorize`).
    pub base: String,
    pub csrf: String,
    pub grants: &'a [crate::authorization::own::OwnGrant],
    pub sessions: &'a [crate::store::SessionSummary],
    /// The hash of this browser's session, to mark it.
    pub this_session: &'a str,
    pub connections: Option<&'a [crate::broker::ConnectionStatus]>,
    pub note: Option<&'a str>,
    /// Whether the person administers the gateway (a link to those pages).
    pub administers: bool,
}

/// A time as people read it: `2026-12-03 05:20 UTC`.
pub(super) fn when(ts: i64) -> String {
    let s = crate::clock::rfc3339_millis(ts * 1000);
    format!("{} {} UTC", &s[..10], &s[11..16])
}

/// The console: the applications a person allowed, their connections, their sessions.
pub fn console(v: &ConsoleView<'_>) -> String {
    let base = escape(&v.base);
    let csrf = escape(&v.csrf);
    let note = v
        .note
        .map(|n| format!(r#"<p class="verified" role="status">{}</p>"#, escape(n)))
        .unwrap_or_default();
    let grants: String = if v.grants.is_empty() {
        r#"<p class="muted">No application has access to your account.</p>"#.into()
    } else {
        let rows: String = v
            .grants
            .iter()
            .map(|g| {
                let name = match &g.client_name {
                    Some(n) if !n.is_empty() => escape(n),
                    _ => format!("<code>{}</code>", escape(&g.client_id)),
                };
                let mark = if g.verified {
                    r#" <span class="verified">verified</span>"#
                } else {
                    ""
                };
                let scopes: Vec<String> = g.scopes.iter().map(|s| escape(s)).collect();
                format!(
                    r#"<tr><td>{name}{mark}<br><code class="muted">{id}</code></td><td><code>{resource}</code></td><td>{scopes}</td><td>{since}</td><td>{last}</td>
<td><form method="post" action="{base}/console/grants/revoke"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="grant" value="{grant}"><button type="submit">Revoke</button></form></td></tr>"#,
                    id = escape(&g.client_id),
                    resource = escape(&g.resource),
                    scopes = scopes.join(" "),
                    since = when(g.created_at),
                    last = g.last_token_at.map(when).unwrap_or_else(|| "—".into()),
                    grant = escape(&g.id),
                )
            })
            .collect();
        format!(
            "<table><thead><tr><th>Application</th><th>Resource</th><th>Scopes</th><th>Since</th><th>Last token</th><th></th></tr></thead><tbody>{rows}</tbody></table>"
        )
    };
    let connections = match v.connections {
        None => String::new(),
        Some(list) => {
            let items: String = list
                .iter()
                .map(|c| {
                    format!(
                        "<li><strong>{}</strong>: {}</li>",
                        escape(&c.upstream),
                        match c.state {
                            "connected" => "connected",
                            "expired" => "expired",
                            "broken" => "needs reconnecting",
                            "shared" => "a shared service account",
                            "exchanged" => "obtained for you on each use",
                            _ => "not connected",
                        }
                    )
                })
                .collect();
            format!(
                r#"<h2>Your accounts at upstream servers</h2><ul>{items}</ul><p><a href="{base}/connections">Connect or disconnect them</a></p>"#
            )
        }
    };
    let sessions: String = v
        .sessions
        .iter()
        .map(|s| {
            let this = if s.id_hash == v.this_session {
                r#" <span class="verified">this browser</span>"#
            } else {
                ""
            };
            format!(
                r#"<tr><td>{source}{this}</td><td>{since}</td><td>{until}</td>
<td><form method="post" action="{base}/console/sessions/end"><input type="hidden" name="csrf" value="{csrf}"><input type="hidden" name="session" value="{id}"><button type="submit">End</button></form></td></tr>"#,
                source = escape(&s.login_source),
                since = when(s.created_at),
                until = when(s.expires_at),
                id = escape(&s.id_hash),
            )
        })
        .collect();
    layout(
        "Your access",
        &format!(
            r#"<h1>Your access</h1>
<p class="muted">Signed in as <strong>{user}</strong>. <a href="{base}/device">Authorize a device</a>{admin} · <a href="{base}/logout">Sign out</a></p>
{note}<h2>Applications you allowed</h2>
{grants}
{connections}
<h2>Your browser sessions</h2>
<table><thead><tr><th>Signed in with</th><th>Since</th><th>Until</th><th></th></tr></thead><tbody>{sessions}</tbody></table>"#,
            user = escape(&v.username),
            admin = if v.administers {
                format!(r#" · <a href="{base}/console/admin">Administration</a>"#)
            } else {
                String::new()
            },
        ),
    )
}
