// The coordinator's status page in headless Chromium, as an operator uses it.
//
// Run by tests/tests/integration/status_page.rs, which starts a cluster with [auth] on and a long
// query, then runs this script with:
//   QUIVER_STATUS_URL   http://HOST:PORT/ of the coordinator's admin port
//   QUIVER_USER, QUIVER_PASSWORD   the query's user
//   QUIVER_QUERY_ID     the running query's id
//   QUIVER_ARTIFACTS    directory for screenshots
//   QUIVER_CHROMIUM     the browser (default /usr/bin/chromium)
// Checks: a visit without credentials is refused (401, page and API); with credentials the query
// is listed as running with stage progress that advances between two reads; its Cancel button
// stops it (it moves to the recent queries as cancelled). Exits non-zero on the first failure.

import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const url = process.env.QUIVER_STATUS_URL;
const user = process.env.QUIVER_USER;
const password = process.env.QUIVER_PASSWORD;
const queryId = process.env.QUIVER_QUERY_ID;
const artifacts = process.env.QUIVER_ARTIFACTS || "target/test-artifacts";
const executablePath = process.env.QUIVER_CHROMIUM || "/usr/bin/chromium";
// The machine running the tests is small and busy with the query: be patient.
const WAIT_MS = 60_000;

for (const [name, value] of Object.entries({ url, user, password, queryId })) {
  if (!value) throw new Error(`missing ${name}: see the header of this script`);
}
mkdirSync(artifacts, { recursive: true });

function check(condition, message) {
  if (!condition) throw new Error(message);
  console.log("ok: " + message);
}

/// The progress the running query's row shows: rows sent to the client so far, and tasks done
/// and rows over all its stages.
async function progress(row) {
  const stages = await row.locator(".stage").evaluateAll((stages) => ({
    stages: stages.length,
    tasksDone: stages.reduce((n, s) => n + Number(s.dataset.tasksDone), 0),
    rows: stages.reduce((n, s) => n + Number(s.dataset.rows), 0),
  }));
  const sent = Number(await row.locator("td").nth(5).innerText());
  return { ...stages, sent };
}

function advanced(first, later) {
  return later.sent > first.sent || later.rows > first.rows || later.tasksDone > first.tasksDone;
}

const browser = await chromium.launch({
  executablePath,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
try {
  // Without credentials: refused, and told how to authenticate.
  const anonymous = await browser.newContext();
  const refused = await anonymous.request.get(url);
  check(refused.status() === 401, `the page without credentials answers 401 (got ${refused.status()})`);
  check(/^Basic/i.test(refused.headers()["www-authenticate"] || ""), "the 401 asks for Basic credentials");
  const api = await anonymous.request.get(new URL("/api/queries", url).href);
  check(api.status() === 401, `the query API without credentials answers 401 (got ${api.status()})`);
  const page0 = await anonymous.newPage();
  // Chromium answers a Basic challenge it has no credentials for with a navigation error.
  let visit;
  try {
    visit = String((await page0.goto(url)).status());
  } catch (e) {
    visit = String(e.message).split("\n")[0];
  }
  check(/^401$|ERR_INVALID_AUTH_CREDENTIALS/.test(visit), `a browser visit without credentials is refused (${visit})`);
  await page0.screenshot({ path: join(artifacts, "status-page-unauthenticated.png") });
  await anonymous.close();

  const context = await browser.newContext({ httpCredentials: { username: user, password } });
  const page = await context.newPage();
  const response = await page.goto(url);
  check(response.status() === 200, "with credentials the page loads");
  await page.locator("#who").filter({ hasText: user }).waitFor({ timeout: WAIT_MS });
  check(true, `the page says who is signed in (${user})`);
  await page.locator("#executors tbody tr").first().waitFor({ timeout: WAIT_MS });
  check((await page.locator("#executors tbody tr").count()) >= 1, "live executors are listed");

  const row = page.locator(`#running tr[data-query-id="${queryId}"]`);
  await row.waitFor({ timeout: WAIT_MS });
  check(true, `running query ${queryId} is listed`);
  await row.locator(".stage").first().waitFor({ timeout: WAIT_MS });
  const first = await progress(row);
  check(first.stages >= 1, `its stages are shown (${first.stages})`);
  await page.screenshot({ path: join(artifacts, "status-page-running.png"), fullPage: true });

  // The page refreshes itself: the progress it shows must move.
  const deadline = Date.now() + WAIT_MS;
  let later = first;
  while (Date.now() < deadline) {
    await page.waitForTimeout(1000);
    later = await progress(row);
    if (advanced(first, later)) break;
  }
  check(
    advanced(first, later),
    `progress advances between two reads (rows sent ${first.sent} -> ${later.sent}, stage rows ${first.rows} -> ${later.rows}, tasks done ${first.tasksDone} -> ${later.tasksDone})`,
  );
  await page.screenshot({ path: join(artifacts, "status-page-progress.png"), fullPage: true });

  await row.locator("button.cancel").click({ timeout: WAIT_MS });
  check(true, "the Cancel button was clicked");
  await row.waitFor({ state: "detached", timeout: WAIT_MS });
  check(true, "the query left the running queries");
  const ended = page.locator(`#recent tr[data-query-id="${queryId}"]`);
  await ended.waitFor({ timeout: WAIT_MS });
  const status = await ended.locator("td").nth(3).innerText();
  check(/cancelled/i.test(status) && /CANCELLED/.test(status), `it is listed as cancelled (${status})`);
  await page.screenshot({ path: join(artifacts, "status-page-cancelled.png"), fullPage: true });
  await context.close();
} finally {
  await browser.close();
}
