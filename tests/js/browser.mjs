// The browser tests' browser: Playwright (playwright-core) driving Debian's Chromium,
// headless, on loopback. The Rust test (tests/integration/browser.rs) starts the gateway and
// sends one step a line on stdin; each answer is one JSON line on stdout. Screenshots go to
// SHOTS (a directory).
//
//   {"do":"authorize","url":…}      sign in, consent, catch the redirect → {"code":…}
//   {"do":"console_revoke","client":…}  the console: find the grant of that client, revoke → {"revoked":true}
//   {"do":"device","url":…}          open a verification URI, confirm the code, allow → {"approved":true}
//   {"do":"admin_block","client":…}  the administrators' console: block that client → {"blocked":true}
//   {"do":"refused","url":…}         open an authorization URL, report the page's text → {"text":…}
//   {"do":"quit"}
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { join } from 'node:path';

const { USER, PASSWORD, SHOTS, CHROMIUM = '/usr/bin/chromium' } = process.env;

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // As root in a sandbox without network: no sandbox, no background traffic to Google.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
const page = await context.newPage();
page.setDefaultTimeout(15000);

const shot = async (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
const say = (v) => process.stdout.write(`${JSON.stringify(v)}\n`);

// The client's redirect URI is on loopback port 9 where nothing listens: catch it there.
let redirected = null;
await context.route('http://127.0.0.1:9/**', (route) => {
  redirected = route.request().url();
  return route.fulfill({ status: 200, contentType: 'text/plain', body: 'back at the client' });
});

async function signInIfAsked() {
  if (await page.locator('input[name="password"]').count()) {
    await page.locator('input[name="username"]').first().fill(USER);
    await page.locator('input[name="password"]').first().fill(PASSWORD);
    await shot('sign-in');
    await Promise.all([page.waitForLoadState('load'), page.locator('button[type="submit"]').first().click()]);
  }
}

const steps = {
  async authorize({ url }) {
    redirected = null;
    await page.goto(url);
    await signInIfAsked();
    await page.getByRole('button', { name: 'Allow' }).waitFor();
    await shot('consent');
    await page.getByRole('button', { name: 'Allow' }).click();
    for (let i = 0; i < 100 && !redirected; i++) await page.waitForTimeout(50);
    if (!redirected) throw new Error(`no redirect to the client; at ${page.url()}`);
    return { code: new URL(redirected).searchParams.get('code') };
  },
  async console_revoke({ base, client }) {
    await page.goto(`${base}/console`);
    await signInIfAsked();
    const row = page.locator('tr', { hasText: client });
    await row.waitFor();
    await shot('console');
    await Promise.all([page.waitForLoadState('load'), row.getByRole('button', { name: 'Revoke' }).click()]);
    await page.getByText('access was revoked').waitFor();
    await shot('console-revoked');
    return { revoked: (await page.locator('tr', { hasText: client }).count()) === 0 };
  },
  async device({ url }) {
    await page.goto(url);
    await signInIfAsked();
    await page.locator('input[name="user_code"]').waitFor();
    await shot('device-code');
    await Promise.all([page.waitForLoadState('load'), page.getByRole('button', { name: 'Continue' }).click()]);
    await page.getByRole('button', { name: 'Allow' }).waitFor();
    await shot('device-consent');
    await Promise.all([page.waitForLoadState('load'), page.getByRole('button', { name: 'Allow' }).click()]);
    await page.getByText('The device is allowed').waitFor();
    await shot('device-done');
    return { approved: true };
  },
  async admin_block({ base, client }) {
    await page.goto(`${base}/console/admin`);
    await signInIfAsked();
    await page.getByRole('heading', { name: 'Administration: Users' }).waitFor();
    await shot('admin-users');
    await page.goto(`${base}/console/admin/clients`);
    const row = page.locator('tr', { hasText: client });
    await row.waitFor();
    await Promise.all([page.waitForLoadState('load'), row.getByRole('button', { name: 'Block' }).click()]);
    await page.getByText('The client is blocked').waitFor();
    await shot('admin-clients');
    await page.goto(`${base}/console/admin/audit?action=client_blocked`);
    await page.locator('tr', { hasText: client }).waitFor();
    await shot('admin-audit');
    return { blocked: true };
  },
  async refused({ url }) {
    await page.goto(url);
    return { text: await page.locator('main').innerText() };
  },
};

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  const step = JSON.parse(line);
  if (step.do === 'quit') break;
  try {
    say(await steps[step.do](step));
  } catch (e) {
    await shot(`failed-${step.do}`).catch(() => {});
    say({ error: String(e && e.stack || e) });
  }
}
await browser.close();
