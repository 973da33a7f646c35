// The gateway as the client under test of the MCP conformance suite's client scenarios
// (`npx @modelcontextprotocol/conformance client --suite auth --command scripts/conformance-client`).
//
// The suite starts a mock MCP server (with its own mock authorization server) and runs this
// with the server's URL. Here that server becomes the gateway's upstream with
// `credentials = { type = "oauth" }`: the gateway does discovery, registration, the
// authorization-code flow, the token request, refresh and step-up — everything the
// scenarios judge. This script only plays what is not the gateway: a person at a browser
// (signing in, confirming the connect page, following redirects) and an MCP client talking
// to the gateway with its own gateway token.
//
// Environment (from the suite): MCP_CONFORMANCE_SCENARIO, MCP_CONFORMANCE_CONTEXT (JSON),
// MCP_CONFORMANCE_PROTOCOL_VERSION. MCP_GATEWAY_BIN names the gateway binary (default:
// target/release or target/debug of this repository).

import { spawn, spawnSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { mkdtempSync, writeFileSync, existsSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const serverUrl = process.argv[process.argv.length - 1];
const scenario = process.env.MCP_CONFORMANCE_SCENARIO || '';
const context = JSON.parse(process.env.MCP_CONFORMANCE_CONTEXT || '{}');
const revision = process.env.MCP_CONFORMANCE_PROTOCOL_VERSION || '2025-11-25';
const log = (...a) => console.error('[conformance-client]', ...a);

function gatewayBin() {
  if (process.env.MCP_GATEWAY_BIN) return process.env.MCP_GATEWAY_BIN;
  for (const p of ['target/release/mcp-oauth-gateway', 'target/debug/mcp-oauth-gateway']) {
    if (existsSync(join(repo, p))) return join(repo, p);
  }
  throw new Error('no gateway binary: build it (cargo build) or set MCP_GATEWAY_BIN');
}

async function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => ok(p)); });
  });
}

// A small browser: one cookie jar (the gateway's cookies only), no automatic redirects.
const jar = new Map();
async function browse(url, init = {}) {
  const u = new URL(url);
  const headers = { ...(init.headers || {}) };
  if (u.origin === gateway.origin && jar.size) {
    headers.cookie = [...jar].map(([k, v]) => `${k}=${v}`).join('; ');
  }
  const r = await fetch(u, { ...init, headers, redirect: 'manual' });
  if (u.origin === gateway.origin) {
    for (const c of r.headers.getSetCookie()) {
      const [pair] = c.split(';');
      const i = pair.indexOf('=');
      jar.set(pair.slice(0, i).trim(), pair.slice(i + 1).trim());
    }
  }
  return r;
}
const absolute = (loc, base) => new URL(loc, base).href;
function hidden(html, name) {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  if (!m) throw new Error(`no ${name} field in page: ${html.slice(0, 600)}`);
  return m[1].replace(/&amp;/g, '&').replace(/&quot;/g, '"');
}
const form = (fields) => ({
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams(fields).toString(),
});

const gateway = { origin: '', token: '', child: null, dir: '' };
const USER = 'conformance';
const PASSWORD = randomBytes(18).toString('base64url');

// A free port found here may be taken by another process before the gateway binds it (the
// tests run many at once): then the gateway exits, and it is started again on another.
async function startGateway() {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startGatewayOnce();
    } catch (e) {
      if (attempt >= 5) throw e;
      process.stderr.write(`[conformance-client] gateway start failed (${e.message}); again\n`);
    }
  }
}

async function startGatewayOnce() {
  const port = await freePort();
  gateway.origin = `http://127.0.0.1:${port}`;
  gateway.dir = mkdtempSync(join(tmpdir(), 'mog-conformance-'));
  const key = `c1:${randomBytes(32).toString('base64')}`;
  const creds = ['type = "oauth"'];
  if (context.client_id) creds.push(`client_id = ${JSON.stringify(context.client_id)}`);
  if (context.client_secret) creds.push(`client_secret = ${JSON.stringify(context.client_secret)}`);
  const config = join(gateway.dir, 'gateway.toml');
  writeFileSync(config, `
[server]
listen = "127.0.0.1:${port}"
public_url = "${gateway.origin}"
[store]
url = "sqlite://${join(gateway.dir, 'gw.db')}"
[keys]
encryption = ["${key}"]
[broker]
allow_http_loopback = true
# The address the suite's mock servers treat as this client's metadata document.
client_metadata_url = "https://conformance-test.local/client-metadata.json"
[[upstreams]]
name = "up"
url = ${JSON.stringify(serverUrl)}
credentials = { ${creds.join(', ')} }
`);
  const bin = gatewayBin();
  const add = spawnSync(bin, ['--config', config, 'users', 'add', USER, '--password-stdin'], {
    input: `${PASSWORD}\n`, encoding: 'utf8',
  });
  if (add.status !== 0) throw new Error(`users add: ${add.stderr}`);
  const child = spawn(bin, ['--config', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  gateway.child = child;
  // Started when this child says it serves (not when something answers on the port: that
  // could be another process that took it).
  await new Promise((ok, fail) => {
    let seen = '';
    const timer = setTimeout(() => fail(new Error('the gateway did not start in 10 s')), 10000);
    child.stderr.on('data', (chunk) => {
      process.stderr.write(chunk);
      seen += chunk.toString();
      if (seen.includes('MCP endpoint')) { clearTimeout(timer); ok(); }
    });
    child.on('exit', (code) => { clearTimeout(timer); fail(new Error(`the gateway exited (${code})`)); });
  });
}

// The gateway's own OAuth, headlessly: register, sign in, consent, token.
async function gatewayToken() {
  const redirect = 'http://127.0.0.1:9/callback';
  const reg = await (await fetch(`${gateway.origin}/register`, {
    method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ client_name: 'conformance wrapper', redirect_uris: [redirect], token_endpoint_auth_method: 'none', grant_types: ['authorization_code', 'refresh_token'] }),
  })).json();
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const resource = `${gateway.origin}/mcp/up`;
  const q = new URLSearchParams({ response_type: 'code', client_id: reg.client_id, redirect_uri: redirect, code_challenge: challenge, code_challenge_method: 'S256', state: 'x', resource });
  let r = await browse(`${gateway.origin}/authorize?${q}`);
  let page = await r.text();
  r = await browse(`${gateway.origin}/authorize/login`, form({ request: hidden(page, 'request'), csrf: hidden(page, 'csrf'), username: USER, password: PASSWORD }));
  if (r.status === 200) {
    page = await r.text();
    r = await browse(`${gateway.origin}/authorize/consent`, form({ request: hidden(page, 'request'), csrf: hidden(page, 'csrf'), decision: 'allow' }));
  }
  const code = new URL(r.headers.get('location')).searchParams.get('code');
  const t = await (await fetch(`${gateway.origin}/token`, {
    method: 'POST', headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code, redirect_uri: redirect, client_id: reg.client_id, code_verifier: verifier, resource }).toString(),
  })).json();
  if (!t.access_token) throw new Error(`no gateway token: ${JSON.stringify(t)}`);
  gateway.token = t.access_token;
}

// The person at the browser: the gateway's connect page, its button, the upstream's
// authorization server (the mock approves at once), and back. Returns the final page.
async function connect(connectUrl) {
  let r = await browse(connectUrl);
  if (r.status !== 200) throw new Error(`connect page: HTTP ${r.status} ${await r.text()}`);
  const page = await r.text();
  const fields = { csrf: hidden(page, 'csrf') };
  const scope = page.match(/name="scope" value="([^"]*)"/);
  if (scope) fields.scope = scope[1];
  r = await browse(connectUrl.split('?')[0], form(fields));
  if (r.status !== 303) throw new Error(`connect start: HTTP ${r.status} ${await r.text()}`);
  let next = r.headers.get('location');
  for (let hops = 0; hops < 10; hops++) {
    r = await browse(next);
    const loc = r.headers.get('location');
    if (!loc || r.status < 300 || r.status >= 400) break;
    next = absolute(loc, next);
  }
  const text = await r.text();
  if (r.status !== 200 || !text.includes('is connected')) {
    throw new Error(`connect failed: HTTP ${r.status} ${text.replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').slice(0, 500)}`);
  }
  log('connected');
}

// JSON-RPC to the gateway's endpoint for the upstream, as an MCP client of `revision`.
let nextId = 1;
let session = null;
async function rpc(method, params, notification = false) {
  const body = { jsonrpc: '2.0', method, params };
  if (!notification) body.id = nextId++;
  const headers = {
    authorization: `Bearer ${gateway.token}`,
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    'mcp-protocol-version': revision,
  };
  if (revision >= '2026-07-28') {
    headers['mcp-method'] = method;
    if (params && typeof params.name === 'string') headers['mcp-name'] = params.name;
    body.params = { ...(params || {}), _meta: { ...(params?._meta || {}), 'io.modelcontextprotocol/protocolVersion': revision, 'io.modelcontextprotocol/clientInfo': { name: 'mcp-oauth-gateway-conformance', version: '1.0.0' }, 'io.modelcontextprotocol/clientCapabilities': {} } };
  }
  if (session) headers['mcp-session-id'] = session;
  const r = await fetch(`${gateway.origin}/mcp/up`, { method: 'POST', headers, body: JSON.stringify(body) });
  if (r.headers.get('mcp-session-id')) session = r.headers.get('mcp-session-id');
  if (notification) return null;
  const type = r.headers.get('content-type') || '';
  const text = await r.text();
  if (type.includes('text/event-stream')) {
    for (const line of text.split('\n')) {
      if (!line.startsWith('data:')) continue;
      const m = JSON.parse(line.slice(5));
      if (m.id === body.id) return m;
    }
    throw new Error(`no answer in the event stream: ${text.slice(0, 300)}`);
  }
  try { return JSON.parse(text); } catch { throw new Error(`HTTP ${r.status}: ${text.slice(0, 300)}`); }
}

// The URL a "connect first" answer names, in any revision's form.
function connectUrlOf(answer) {
  const e = answer.error;
  if (e?.code === -32042) return e.data?.elicitations?.[0]?.url;
  const asks = answer.result?.resultType === 'input_required' ? Object.values(answer.result.inputRequests || {}) : [];
  return asks.find((a) => a.params?.mode === 'url')?.params.url;
}

// A call, connecting (or reconnecting, or stepping up) when the gateway asks, a bounded
// number of times (the suite checks that a client does not loop).
async function call(method, params, tries = 2) {
  for (let i = 0; ; i++) {
    const answer = await rpc(method, params);
    const url = connectUrlOf(answer);
    if (!url) return answer;
    if (i >= tries) throw new Error(`still asked to connect after ${tries} tries: ${JSON.stringify(answer)}`);
    log(`asked to connect: ${url}`);
    await connect(url);
  }
}

async function main() {
  await startGateway();
  await gatewayToken();
  // No connecting up front: like an MCP client, call, and connect when the gateway says so
  // (it passes the upstream's challenge on, with the scope the upstream asked for).
  if (revision < '2026-07-28') {
    const init = await call('initialize', { protocolVersion: revision, capabilities: { elicitation: { url: {} } }, clientInfo: { name: 'mcp-oauth-gateway-conformance', version: '1.0.0' } });
    if (init.error) throw new Error(`initialize: ${JSON.stringify(init.error)}`);
    await rpc('notifications/initialized', {}, true);
  }
  const list = await call('tools/list', {});
  if (list.error) throw new Error(`tools/list: ${JSON.stringify(list.error)}`);
  for (const tool of list.result.tools || []) {
    const answer = await call('tools/call', { name: tool.name, arguments: {} });
    log(`tools/call ${tool.name}: ${JSON.stringify(answer).slice(0, 200)}`);
  }
}

try {
  await main();
  log(`scenario ${scenario}: done`);
} catch (e) {
  log(`scenario ${scenario}: ${e.message}`);
  process.exitCode = 1;
} finally {
  gateway.child?.kill();
  if (gateway.dir) rmSync(gateway.dir, { recursive: true, force: true });
}
