// A real OpenID Connect provider for the tests: the certified `oidc-provider` package, on
// loopback, with one confidential client and accounts for any login name (its development
// sign-in and consent pages take any password). It prints one JSON line, {"issuer": ...},
// once it listens, and runs until its stdin closes.
//
// Environment: OIDC_PORT, OIDC_CLIENT_ID, OIDC_CLIENT_SECRET, OIDC_REDIRECT_URI.

import Provider from "oidc-provider";

const port = Number(process.env.OIDC_PORT);
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
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
          groups: ["staff"],
        };
      },
    };
  },
  claims: {
    openid: ["sub"],
    email: ["email", "email_verified"],
    profile: ["name"],
    groups: ["groups"],
  },
  // ID tokens carry the claims themselves, as many providers' do.
  conformIdTokenClaims: false,
  cookies: { keys: ["test cookie key, not a secret"] },
  features: { devInteractions: { enabled: true } },
});
// Development warnings (generated keys, plain http) are expected here.
provider.on("server_error", (_ctx, err) => console.error("oidc-provider:", err));

const server = provider.listen(port, "127.0.0.1", () => {
  console.log(JSON.stringify({ issuer }));
});
process.stdin.on("end", () => server.close(() => process.exit(0)));
process.stdin.resume();
