// An OAuth-protected MCP server for the broker's tests, built from the TypeScript SDK's own
// parts: its authorization-server router (metadata, dynamic registration, authorize, token,
// revocation), its bearer middleware and protected-resource metadata, and a stateless MCP
// server. The authorization server approves at once (there is no person to ask) and can be
// told to let tokens lapse, so that the gateway's refresh and reconnect paths are exercised.
//
//   MCP_PORT, AUTH_PORT   where to listen (127.0.0.1)
//   ROTATE=1              rotate refresh tokens on use
//   NO_REFRESH=1          issue no refresh tokens
//   CIMD=1                accept Client ID Metadata Documents (fetched from the client id URL)
//   SERVICE=id:secret     a client that may use the client_credentials grant
//   TOKEN_REDIRECT=url    the token endpoint answers 302 to url (a client must not follow)
//   SESSIONS=1            a stateful server (Mcp-Session-Id), not a stateless one
//   ANON_INIT=1           initialize and notifications need no token (tools do)
//   EXCHANGE=id           a client that may use token exchange (RFC 8693) with a JWT subject
//                         token from the issuer the test names at POST /test/trust
//
// The test reads and steers it at the authorization server's /test/* paths: `stats`
// (counts, and a hint of each access token the MCP server saw), `expire-access` (every
// access token refused from now on) and `break` (refresh tokens too).

import { createHash, randomUUID } from 'node:crypto';
import express from 'express';
import { mcpAuthRouter, mcpAuthMetadataRouter, getOAuthProtectedResourceMetadataUrl } from '@modelcontextprotocol/sdk/server/auth/router.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import { InvalidGrantError, InvalidTokenError } from '@modelcontextprotocol/sdk/server/auth/errors.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';
import { createRemoteJWKSet, jwtVerify } from 'jose';

const MCP_PORT = Number(process.env.MCP_PORT);
const AUTH_PORT = Number(process.env.AUTH_PORT);
const ROTATE = process.env.ROTATE === '1';
const NO_REFRESH = process.env.NO_REFRESH === '1';
const CIMD = process.env.CIMD === '1';
// RESOURCE_URL: the resource its tokens are for, when that is another server (the broker
// benchmark puts a fast Rust upstream behind this authorization server).
const mcpUrl = new URL(process.env.RESOURCE_URL || `http://127.0.0.1:${MCP_PORT}/mcp`);
const issuer = new URL(`http://127.0.0.1:${AUTH_PORT}`);

const hint = (t) => createHash('sha256').update(t).digest('hex').slice(0, 16);
const stats = { registrations: 0, codes: 0, refreshes: 0, revocations: 0, documents: 0, services: 0, exchanges: 0, subjects: [], seen: [] };
let trusted = null;
const clients = new Map();
const codes = new Map();
const access = new Map();
const refresh = new Map();

const issue = (clientId, scopes, resource) => {
  const token = randomUUID();
  access.set(token, { clientId, scopes, resource, expiresAt: Date.now() + 3600_000 });
  const out = { access_token: token, token_type: 'Bearer', expires_in: 3600, scope: scopes.join(' ') };
  if (!NO_REFRESH) {
    const r = randomUUID();
    refresh.set(r, { clientId, scopes, resource });
    out.refresh_token = r;
  }
  return out;
};

const provider = {
  clientsStore: {
    async getClient(id) {
      if (CIMD && /^https?:\/\//.test(id)) {
        // A Client ID Metadata Document: the id is where it lives, and it must name itself.
        const doc = await (await fetch(id)).json();
        stats.documents++;
        if (doc.client_id !== id) return undefined;
        return { ...doc, token_endpoint_auth_method: 'none' };
      }
      return clients.get(id);
    },
    async registerClient(c) { stats.registrations++; clients.set(c.client_id, c); return c; },
  },
  async authorize(client, params, res) {
    if (!client.redirect_uris.includes(params.redirectUri)) throw new Error('unregistered redirect_uri');
    const code = randomUUID();
    codes.set(code, { client, params });
    const to = new URL(params.redirectUri);
    to.searchParams.set('code', code);
    if (params.state !== undefined) to.searchParams.set('state', params.state);
    res.redirect(to.toString());
  },
  async challengeForAuthorizationCode(client, code) {
    const c = codes.get(code);
    if (!c) throw new InvalidGrantError('unknown code');
    return c.params.codeChallenge;
  },
  async exchangeAuthorizationCode(client, code, _verifier, _redirectUri, resource) {
    const c = codes.get(code);
    if (!c || c.client.client_id !== client.client_id) throw new InvalidGrantError('unknown code');
    if (!resource || resource.href !== mcpUrl.href) throw new InvalidGrantError(`wrong resource ${resource}`);
    codes.delete(code);
    stats.codes++;
    return issue(client.client_id, c.params.scopes || [], resource.href);
  },
  async exchangeRefreshToken(client, token, _scopes, resource) {
    const r = refresh.get(token);
    if (!r || r.clientId !== client.client_id) throw new InvalidGrantError('unknown refresh token');
    if (resource && resource.href !== mcpUrl.href) throw new InvalidGrantError('wrong resource');
    stats.refreshes++;
    const out = issue(client.client_id, r.scopes, r.resource);
    if (ROTATE) {
      refresh.delete(token);
    } else {
      // Not rotated: the old refresh token stays, and none comes back.
      refresh.delete(out.refresh_token);
      delete out.refresh_token;
    }
    return out;
  },
  async verifyAccessToken(token) {
    const t = access.get(token);
    if (!t || t.expiresAt < Date.now()) throw new InvalidTokenError('unknown or expired token');
    return { token, clientId: t.clientId, scopes: t.scopes, expiresAt: Math.floor(t.expiresAt / 1000), resource: new URL(t.resource) };
  },
  async revokeToken(_client, request) {
    stats.revocations++;
    access.delete(request.token);
    refresh.delete(request.token);
  },
};

const off = { rateLimit: false };
const auth = express();
auth.use(express.json());
if (CIMD) {
  // The SDK's router does not advertise it: the metadata, amended.
  auth.get('/.well-known/oauth-authorization-server', (_req, res) => res.json({
    issuer: issuer.href,
    authorization_endpoint: `${issuer.href}authorize`,
    token_endpoint: `${issuer.href}token`,
    revocation_endpoint: `${issuer.href}revoke`,
    response_types_supported: ['code'],
    grant_types_supported: ['authorization_code', 'refresh_token'],
    code_challenge_methods_supported: ['S256'],
    token_endpoint_auth_methods_supported: ['none'],
    scopes_supported: ['mcp:tools'],
    client_id_metadata_document_supported: true,
  }));
}
if (process.env.SERVICE) {
  // The SDK's token handler has no client_credentials: this one does, for one client.
  const [id, secret] = process.env.SERVICE.split(':');
  auth.post('/token', express.urlencoded({ extended: false }), (req, res, next) => {
    if (req.body.grant_type !== 'client_credentials') return next();
    // client_secret_post, as the metadata advertises (or Basic).
    const basic = (req.headers.authorization || '').replace(/^Basic /, '');
    const [cid, csecret] = basic
      ? Buffer.from(basic, 'base64').toString().split(':').map(decodeURIComponent)
      : [req.body.client_id, req.body.client_secret];
    if (cid !== id || csecret !== secret) return res.status(401).json({ error: 'invalid_client' });
    if (req.body.resource !== mcpUrl.href) return res.status(400).json({ error: 'invalid_target' });
    stats.services++;
    const out = issue(id, (req.body.scope || '').split(' ').filter(Boolean), mcpUrl.href);
    delete out.refresh_token;
    res.json(out);
  });
}
if (process.env.TOKEN_REDIRECT) {
  auth.post('/token', (_req, res) => res.redirect(302, process.env.TOKEN_REDIRECT));
}
if (process.env.EXCHANGE) {
  auth.use(express.json());
  auth.post('/test/trust', (req, res) => {
    // A token issuer whose JWTs are subjects, or an identity provider whose access tokens are
    // (checked at its userinfo endpoint).
    trusted = req.body.userinfo
      ? { userinfo: req.body.userinfo }
      : { issuer: req.body.issuer, keys: createRemoteJWKSet(new URL(`${req.body.issuer}/.well-known/jwks.json`)) };
    res.json({ ok: true });
  });
  auth.post('/token', express.urlencoded({ extended: false }), async (req, res, next) => {
    if (req.body.grant_type !== 'urn:ietf:params:oauth:grant-type:token-exchange') return next();
    if (req.body.client_id !== process.env.EXCHANGE) return res.status(401).json({ error: 'invalid_client' });
    if (!trusted) return res.status(400).json({ error: 'invalid_grant', error_description: 'no trusted issuer' });
    if (req.body.resource !== mcpUrl.href) return res.status(400).json({ error: 'invalid_target' });
    const type = req.body.subject_token_type;
    const wanted = trusted.userinfo ? 'urn:ietf:params:oauth:token-type:access_token' : 'urn:ietf:params:oauth:token-type:jwt';
    if (type !== wanted) return res.status(400).json({ error: 'invalid_request', error_description: `subject_token_type ${type}` });
    try {
      let payload;
      if (trusted.userinfo) {
        const r = await fetch(trusted.userinfo, { headers: { authorization: `Bearer ${req.body.subject_token}` } });
        if (!r.ok) throw new Error(`userinfo answered ${r.status}`);
        payload = await r.json();
      } else {
        // The subject token must be the trusted issuer's, addressed to this server.
        ({ payload } = await jwtVerify(req.body.subject_token, trusted.keys, { issuer: trusted.issuer, audience: issuer.href }));
      }
      stats.exchanges++;
      stats.subjects.push(payload.sub);
      const out = issue(process.env.EXCHANGE, (req.body.scope || '').split(' ').filter(Boolean), mcpUrl.href);
      delete out.refresh_token;
      res.json({ ...out, issued_token_type: 'urn:ietf:params:oauth:token-type:access_token' });
    } catch (e) {
      res.status(400).json({ error: 'invalid_grant', error_description: String(e.message) });
    }
  });
}
auth.use(mcpAuthRouter({
  provider,
  issuerUrl: issuer,
  scopesSupported: ['mcp:tools', 'offline_access'],
  authorizationOptions: off,
  tokenOptions: off,
  clientRegistrationOptions: off,
  revocationOptions: off,
}));
auth.get('/test/stats', (_req, res) => res.json(stats));
auth.post('/test/expire-access', (_req, res) => { access.clear(); res.json({ ok: true }); });
auth.post('/test/break', (_req, res) => { access.clear(); refresh.clear(); res.json({ ok: true }); });
auth.listen(AUTH_PORT, '127.0.0.1');

const app = express();
app.use(express.json());
app.use(mcpAuthMetadataRouter({
  oauthMetadata: (await (await fetch(`${issuer.href}.well-known/oauth-authorization-server`).catch(() => null))?.json()) ?? {
    issuer: issuer.href,
    authorization_endpoint: `${issuer.href}authorize`,
    token_endpoint: `${issuer.href}token`,
    response_types_supported: ['code'],
  },
  resourceServerUrl: mcpUrl,
  scopesSupported: ['mcp:tools'],
  resourceName: 'broker test upstream',
}));
const bearer = requireBearerAuth({
  verifier: provider,
  requiredScopes: [],
  resourceMetadataUrl: getOAuthProtectedResourceMetadataUrl(mcpUrl),
});
const maybeBearer = (req, res, next) => {
  const m = req.body?.method;
  if (process.env.ANON_INIT === '1' && (m === 'initialize' || m?.startsWith('notifications/'))) return next();
  return bearer(req, res, next);
};
app.post('/mcp', maybeBearer, async (req, res) => {
  if (req.auth) stats.seen.push(hint(req.auth.token));
  const server = new McpServer({ name: 'broker-upstream', version: '1.0.0' });
  server.registerTool('token_hint', {
    description: 'A hint of the access token this call carried',
    inputSchema: {},
  }, async (_args, extra) => ({ content: [{ type: 'text', text: extra.authInfo ? hint(extra.authInfo.token) : 'anonymous' }] }));
  server.registerTool('echo', {
    description: 'Echoes its text',
    inputSchema: { text: z.string() },
  }, async ({ text }) => ({ content: [{ type: 'text', text }] }));
  if (process.env.SESSIONS === '1') {
    const sid = req.headers['mcp-session-id'];
    let transport = sid ? sessions.get(sid) : undefined;
    if (!transport) {
      transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: () => randomUUID(),
        enableJsonResponse: true,
        onsessioninitialized: (id) => sessions.set(id, transport),
      });
      await server.connect(transport);
    }
    await transport.handleRequest(req, res, req.body);
    return;
  }
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
  res.on('close', () => { transport.close(); server.close(); });
  await server.connect(transport);
  await transport.handleRequest(req, res, req.body);
});
const sessions = new Map();
app.listen(MCP_PORT, '127.0.0.1', () => console.log(`ready ${MCP_PORT} ${AUTH_PORT}`));
