// A real OpenID Connect provider for the tests: the certified `oidc-provider` package, on
// loopback, with one confidential client and accounts for any login name (its development
// sign-in and consent pages take any password). It prints one JSON line, {"issuer": ...},
// once it listens, and runs until its stdin closes.
//
// Environment: OIDC_PORT, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI.
//
// What a test cannot make a correct provider do, it asks for at POST /_test/control:
//   ?tamper=iss|aud|nonce|expired|unsigned|foreign   the next ID tokens are re-signed (or
//                                                    not) with that one thing wrong
//   ?tamper=overage                                  …or with Entra's groups overage
//   ?tamper=                                         back to correct ID tokens
//   ?rotate=1                                        a new signing key: ID tokens are signed
//                                                    with it, and the JWKS lists it first
// Everything else is the provider's own behaviour (refresh tokens, revocation, errors,
// resource-bound access tokens, introspection at /token/introspection).

import Provider from "oidc-provider";
import * as jose from "jose";

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;

async function key(kid) {
  const { privateKey, publicKey } = await jose.generateKeyPair("RS256", { extractable: true });
  const pub = { ...(await jose.exportJWK(publicKey)), kid, alg: "RS256", use: "sig" };
  const priv = { ...(await jose.exportJWK(privateKey)), kid, alg: "RS256", use: "sig" };
  return { kid, privateKey, pub, priv };
}
const first = await key("k1");
const second = await key("k2");
// Never published: a token signed with it is a forgery.
const stranger = await key("k1");
let rotated = false;
let tamper = null;

const provider = new Provider(issuer, {
  jwks: { keys: [first.priv] },
  clients: [
    {
      client_id: process.env.OIDC_CLIENT_ID,
      client_secret: process.env.OIDC_CLIENT_SECRET,
      redirect_uris: [process.env.OIDC_REDIRECT_URI],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
    },
  ],
  // The sign-in page's login name is the account id, and the `sub` of its tokens.
  async findAccount(_ctx, id) {
    return {
      accountId: id,
      async claims() {
        return {
          sub: id,
          email: `${id}@example.com`,
          email_verified: true,
          name: id,
          preferred_username: id,
          groups: id.startsWith("admin") ? ["staff", "admins"] : ["staff"],
        };
      },
    };
  },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name", "preferred_username"],
    groups: ["groups"],
  },
  // ID tokens carry the claims themselves, as many providers' do.
  conformIdTokenClaims: false,
  cookies: { keys: ["test cookie key, not a secret"] },
  features: {
    devInteractions: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
    // Access tokens for a resource (RFC 8707) carry it as their audience: JWTs (RFC 9068),
    // or opaque ones (for introspection) when the resource's path ends in /opaque.
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resource) => ({
        scope: "mcp",
        audience: resource,
        accessTokenTTL: 600,
        accessTokenFormat: resource.endsWith("/opaque") ? "opaque" : "jwt",
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
});
// Development warnings (generated keys, plain http) are expected here.
provider.on("server_error", (_ctx, err) => console.error("oidc-provider:", err));

provider.use(async (ctx, next) => {
  if (ctx.path === "/_test/control" && ctx.method === "POST") {
    if (ctx.query.tamper !== undefined) tamper = ctx.query.tamper || null;
    if (ctx.query.rotate) rotated = true;
    ctx.body = { tamper, rotated };
    return;
  }
  await next();
  if (ctx.path === "/jwks" && rotated) {
    ctx.body = { keys: [second.pub, first.pub] };
  }
  if (ctx.path === "/token" && ctx.body && typeof ctx.body.id_token === "string" && (tamper || rotated)) {
    const claims = jose.decodeJwt(ctx.body.id_token);
    const now = Math.floor(Date.now() / 1000);
    let signer = rotated ? second : first;
    switch (tamper) {
      case "iss": claims.iss = "http://127.0.0.1:1"; break;
      case "aud": claims.aud = "someone-else"; break;
      case "nonce": claims.nonce = "not-the-gateways"; break;
      case "expired": claims.iat = now - 7200; claims.exp = now - 3600; break;
      case "foreign": signer = stranger; break;
      // Entra's groups "overage": too many groups for the token, which points elsewhere.
      case "overage":
        delete claims.groups;
        claims._claim_names = { groups: "src1" };
        claims._claim_sources = { src1: { endpoint: "https://graph.windows.net/t/users/x/getMemberObjects" } };
        break;
      default: break;
    }
    ctx.body.id_token = tamper === "unsigned"
      ? new jose.UnsecuredJWT(claims).encode()
      : await new jose.SignJWT(claims)
          .setProtectedHeader({ alg: "RS256", kid: signer.kid })
          .sign(signer.privateKey);
  }
});

const server = provider.listen(port, "127.0.0.1", () => {
  console.log(JSON.stringify({ issuer }));
});
process.stdin.on("end", () => server.close(() => process.exit(0)));
process.stdin.resume();
