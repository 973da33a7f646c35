// The TypeScript SDK's MCP client, driven headlessly: it completes OAuth against the gateway
// by itself (discovery from the 401, registration or a given client_id, PKCE, token
// exchange, refresh); this script only plays the person at the browser by posting the
// login and consent forms. It prints one JSON line per step.
//
// Environment: MCP_URL, MCP_USER, MCP_PASSWORD; MCP_CLIENT_ID to use a known client_id
// (a Client ID Metadata Document URL) instead of dynamic registration; MCP_WAIT=1 to call
// the tool a second time after a line arrives on stdin (the test moves the clock meanwhile);
// MCP_TOOL and MCP_ARGS (JSON) to call another tool than whoami; MCP_REPEAT=n to call it n
// more times (one line each).

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";
import readline from "node:readline";

const url = new URL(process.env.MCP_URL);
const user = process.env.MCP_USER;
const password = process.env.MCP_PASSWORD;
const givenClientId = process.env.MCP_CLIENT_ID;
const redirectUrl = "http://127.0.0.1:9999/callback";
const toolName = process.env.MCP_TOOL || "whoami";
const toolArgs = JSON.parse(process.env.MCP_ARGS || "{}");

let pendingCode = null;
let tokenSaves = 0;

const provider = {
  _client: givenClientId ? { client_id: givenClientId } : undefined,
  _tokens: undefined,
  _verifier: undefined,
  get redirectUrl() { return redirectUrl; },
  get clientMetadata() {
    return {
      client_name: "TypeScript SDK test client",
      redirect_uris: [redirectUrl],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  },
  clientInformation() { return this._client; },
  saveClientInformation(info) { this._client = info; },
  tokens() { return this._tokens; },
  saveTokens(t) { this._tokens = t; tokenSaves++; },
  saveCodeVerifier(v) { this._verifier = v; },
  codeVerifier() { return this._verifier; },
  async redirectToAuthorization(authorizationUrl) {
    pendingCode = await approve(authorizationUrl);
  },
};

function hidden(html, name) {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  if (!m) throw new Error(`no ${name} field in page: ${html.slice(0, 400)}`);
  return m[1];
}

// A person at the browser: sign in, allow, and hand back the code.
async function approve(authorizationUrl) {
  let r = await fetch(authorizationUrl, { redirect: "manual" });
  if (r.status !== 200) throw new Error(`authorize answered ${r.status}`);
  const cookies = r.headers.getSetCookie().map((c) => c.split(";")[0]);
  const page = await r.text();
  const form = { request: hidden(page, "request"), csrf: hidden(page, "csrf") };
  const origin = new URL(authorizationUrl).origin;
  const base = new URL(authorizationUrl).pathname.replace(/\/authorize$/, "");
  r = await fetch(`${origin}${base}/authorize/login`, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", cookie: cookies.join("; ") },
    body: new URLSearchParams({ ...form, username: user, password }),
  });
  if (r.status !== 200) throw new Error(`login answered ${r.status}`);
  cookies.push(...r.headers.getSetCookie().map((c) => c.split(";")[0]));
  const cookie = cookies.join("; ");
  r = await fetch(`${origin}${base}/authorize/consent`, {
    method: "POST",
    redirect: "manual",
    headers: { "content-type": "application/x-www-form-urlencoded", cookie },
    body: new URLSearchParams({ ...form, decision: "allow" }),
  });
  if (r.status !== 303) throw new Error(`consent answered ${r.status}`);
  const back = new URL(r.headers.get("location"));
  if (back.searchParams.get("iss") === null) throw new Error("no iss in the authorization response");
  const code = back.searchParams.get("code");
  if (!code) throw new Error(`no code: ${back}`);
  return code;
}

async function connect() {
  const client = new Client({ name: "sdk-test", version: "1.0.0" });
  let transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
  try {
    await client.connect(transport);
  } catch (e) {
    if (!(e instanceof UnauthorizedError) || !pendingCode) throw e;
    await transport.finishAuth(pendingCode);
    pendingCode = null;
    transport = new StreamableHTTPClientTransport(url, { authProvider: provider });
    await client.connect(transport);
  }
  return client;
}

async function whoami(client) {
  const tools = await client.listTools();
  if (!tools.tools.some((t) => t.name === toolName)) throw new Error(`no ${toolName} tool`);
  const result = await client.callTool({ name: toolName, arguments: toolArgs });
  return result.structuredContent ?? result.content[0].text;
}

const client = await connect();
console.log(JSON.stringify({
  step: "first",
  who: await whoami(client),
  client_id: provider._client.client_id,
  access_token: provider._tokens.access_token,
}));
for (let i = 0; i < Number(process.env.MCP_REPEAT || 0); i++) {
  console.log(JSON.stringify({ step: `repeat${i}`, who: await whoami(client) }));
}
if (process.env.MCP_WAIT === "1") {
  const rl = readline.createInterface({ input: process.stdin });
  for await (const _line of rl) break;
  rl.close();
  const before = tokenSaves;
  const who = await whoami(client);
  console.log(JSON.stringify({ step: "second", who, refreshed: tokenSaves > before }));
}
await client.close();
