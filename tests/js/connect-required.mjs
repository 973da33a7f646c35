// A real MCP client (the TypeScript SDK's) calling an upstream through the gateway for a
// person who has not connected their account there yet: it prints what the SDK made of the
// gateway's answer (one JSON line), waits for a line on stdin (the test connects the account
// in a browser meanwhile), then calls again and prints the result.
//
// Environment: MCP_URL (the gateway's endpoint for the upstream), MCP_TOKEN (a gateway
// access token for it), MCP_TOOL.

import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import readline from "node:readline";

const transport = new StreamableHTTPClientTransport(new URL(process.env.MCP_URL), {
  requestInit: { headers: { Authorization: `Bearer ${process.env.MCP_TOKEN}` } },
});
// It can open URLs for the user (URL-mode elicitation, 2025-11-25).
const client = new Client(
  { name: "connect-required-test", version: "1.0.0" },
  { capabilities: { elicitation: { url: {} } } },
);
const call = () => client.callTool({ name: process.env.MCP_TOOL, arguments: {} });
try {
  await client.connect(transport);
  await call();
  console.log(JSON.stringify({ step: "first", connected: true }));
} catch (e) {
  console.log(JSON.stringify({
    step: "first",
    name: e.constructor.name,
    code: e.code,
    elicitations: e.data?.elicitations ?? e.elicitations ?? null,
    message: e.message,
    protocol: transport.protocolVersion ?? null,
  }));
}
const rl = readline.createInterface({ input: process.stdin });
for await (const _line of rl) break;
rl.close();
const result = await call();
console.log(JSON.stringify({ step: "second", text: result.content[0].text }));
await client.close();
