// Drives Debian's chromium (through playwright-core, which downloads no browser) through a
// browser login scenario for Portcullis's integration tests (tests/common/browser.rs runs it).
//
//   node tests/browser/login.mjs '<scenario JSON>'
//   node tests/browser/login.mjs < scenario.json        (or with the argument `-`)
//
// Scenario (every field but `steps` optional):
//   {
//     "chromium": "/usr/bin/chromium",      the browser binary
//     "timeout_ms": 15000,                  bound of every single wait (navigation, form, click)
//     "total_timeout_ms": 60000,            bound of the whole run (the script then exits 3)
//     "cookies": [{"name": "k", "value": "v", "url": "http://127.0.0.1:8080"}],
//                                           preset before the first step (Playwright's
//                                           addCookies format: `url`, or `domain` + `path`)
//     "steps": [ STEP, ... ]
//   }
// STEP: one action, then checks on where it landed:
//   {"do": "goto",    "url": U}                     navigate to U (redirects followed)
//   {"do": "login",   "login": "alice", "password": "pw"}
//                                                   on the provider's login form: fill, sign in
//   {"do": "consent"}                               on the provider's consent page: Continue
//   {"do": "logout"}                                on the provider's end_session confirmation:
//                                                   click button[name=logout]
//   {"do": "click",   "selector": S}                click S; expects a navigation
//   {"do": "fetch",   "url": U, "method": "GET", "headers": {...}}
//                                                   a background fetch() from the current page
//                                                   (redirect: manual); no navigation
//   checks, each optional, all on the page the step lands on (for fetch: on its answer):
//     "expect_url": exact URL, "expect_url_re": JS regex the URL must match,
//     "expect_page": "login" | "consent" | "logout" | "idp_error" | "other",
//     "expect_status": HTTP status of the landing document, "expect_text": a substring of it.
//   A login/consent/logout step first checks that the current page is that form.
//
// Output: one JSON object on stdout, also on failure:
//   { "ok": true|false, "error": "..." (on failure), "browser_version": "...",
//     "launch_ms": N, "total_ms": N,
//     "steps": [ { "i", "do", "url", "status", "page", "title", "text", "body", "chain",
//                  "requests", "cookies", "ms" } ],
//     "cookies": [ ... every cookie the browser holds at the end ... ] }
//   url/status: where the step landed; page: the kind of page (as in expect_page); text: the
//   page's visible text; body: the landing document's bytes as text (the raw JSON for an
//   upstream echo); chain: the main-frame redirect chain that led there, [{url, status,
//   location}], last entry the landing document; requests: every request the page made during
//   the step [{method, url, status, type, error}]; cookies: the browser's cookies after the step,
//   [{name, domain, path, value, value_len, http_only, secure, same_site, expires}].
// Exit status: 0 when every step and check passed; 1 with the reason on stderr (and in `error`)
// otherwise; 2 for a bad scenario; 3 when total_timeout_ms ran out.
//
// Chromium gets a fresh user-data-dir per run (removed afterwards) and resolves only localhost
// and 127.0.0.1 (this machine has no other network). Pages are taken as loaded at
// DOMContentLoaded: the provider's pages import a web font that cannot load offline.

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

// Loaded as CommonJS: its ESM wrapper takes about half a second longer to import.
const { chromium } = createRequire(import.meta.url)('playwright-core');

const TEXT_CAP = 64 * 1024;
const BODY_CAP = 256 * 1024;
const REQUESTS_CAP = 200;

class ScenarioError extends Error {}

function readScenario() {
  const arg = process.argv[2];
  const raw = arg === undefined || arg === '-' ? readFileSync(0, 'utf8') : arg;
  let s;
  try {
    s = JSON.parse(raw);
  } catch (e) {
    throw new ScenarioError(`the scenario is not JSON: ${e.message}`);
  }
  if (typeof s !== 'object' || s === null || !Array.isArray(s.steps)) {
    throw new ScenarioError('the scenario needs "steps": [...]');
  }
  const known = ['goto', 'login', 'consent', 'logout', 'click', 'fetch'];
  s.steps.forEach((st, i) => {
    if (!known.includes(st.do)) {
      throw new ScenarioError(`step ${i}: "do" must be one of ${known.join(', ')}, got ${JSON.stringify(st.do)}`);
    }
    if ((st.do === 'goto' || st.do === 'fetch') && typeof st.url !== 'string') {
      throw new ScenarioError(`step ${i} (${st.do}) needs "url"`);
    }
    if (st.do === 'click' && typeof st.selector !== 'string') {
      throw new ScenarioError(`step ${i} (click) needs "selector"`);
    }
  });
  return s;
}

function cap(text, n) {
  if (typeof text !== 'string' || text.length <= n) return text;
  return `${text.slice(0, n)}[... ${text.length - n} more characters]`;
}

function cookieView(c) {
  return {
    name: c.name,
    domain: c.domain,
    path: c.path,
    value: c.value,
    value_len: c.value.length,
    http_only: c.httpOnly,
    secure: c.secure,
    same_site: c.sameSite,
    expires: c.expires,
  };
}

// What kind of page is showing: the provider's login form, its consent page, its end_session
// confirmation, its error page, or anything else.
async function pageKind(page) {
  return page.evaluate(() => {
    const has = (sel) => document.querySelector(sel) !== null;
    if (has('input[name=prompt][value=login]') && has('input[name=login]')) return 'login';
    if (has('input[name=prompt][value=consent]')) return 'consent';
    if (has('button[name=logout]')) return 'logout';
    if (document.title === 'oops! something went wrong') return 'idp_error';
    return 'other';
  });
}

// The redirect chain that ended in `resp`, first request first.
async function chainOf(resp) {
  if (!resp) return [];
  const reqs = [];
  for (let r = resp.request(); r; r = r.redirectedFrom()) reqs.unshift(r);
  const out = [];
  for (const r of reqs) {
    const res = r === resp.request() ? resp : await r.response();
    out.push({
      url: r.url(),
      status: res ? res.status() : null,
      location: res ? (res.headers().location ?? null) : null,
    });
  }
  return out;
}

async function main() {
  const started = Date.now();
  let scenario;
  try {
    scenario = readScenario();
  } catch (e) {
    process.stderr.write(`login.mjs: ${e.message}\n`);
    process.stdout.write(`${JSON.stringify({ ok: false, error: e.message, steps: [] })}\n`);
    process.exit(2);
  }
  const timeout = scenario.timeout_ms ?? 15000;
  const result = { ok: false, browser_version: null, launch_ms: null, total_ms: null, steps: [], cookies: [] };

  const finish = (code, error) => {
    result.total_ms = Date.now() - started;
    if (error) {
      result.ok = false;
      result.error = error;
      process.stderr.write(`login.mjs: ${error}\n`);
    } else {
      result.ok = true;
    }
    process.stdout.write(`${JSON.stringify(result)}\n`);
    return code;
  };

  const watchdog = setTimeout(() => {
    process.exitCode = finish(3, `the whole scenario took longer than ${scenario.total_timeout_ms ?? 60000} ms; steps done: ${result.steps.length}`);
    process.exit();
  }, scenario.total_timeout_ms ?? 60000);

  const userDataDir = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
  let context;
  let code = 0;
  try {
    const t0 = Date.now();
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath: scenario.chromium ?? '/usr/bin/chromium',
      headless: true,
      timeout,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1',
      ],
    });
    result.launch_ms = Date.now() - t0;
    result.browser_version = context.browser()?.version() ?? null;
    context.setDefaultTimeout(timeout);
    context.setDefaultNavigationTimeout(timeout);
    if (Array.isArray(scenario.cookies) && scenario.cookies.length > 0) {
      await context.addCookies(scenario.cookies);
    }
    const page = context.pages()[0] ?? (await context.newPage());

    // Every request the page makes, attributed to the step running when it finished.
    let requests = [];
    const record = (entry) => {
      if (requests.length < REQUESTS_CAP) requests.push(entry);
    };
    page.on('requestfinished', async (req) => {
      const res = await req.response().catch(() => null);
      record({ method: req.method(), url: req.url(), status: res ? res.status() : null, type: req.resourceType(), error: null });
    });
    page.on('requestfailed', (req) => {
      record({ method: req.method(), url: req.url(), status: null, type: req.resourceType(), error: req.failure()?.errorText ?? 'failed' });
    });

    for (const [i, st] of scenario.steps.entries()) {
      const stepStart = Date.now();
      requests = [];
      const where = `step ${i} (${st.do}${st.url ? ` ${st.url}` : ''})`;
      const fail = async (why) => {
        let text = '';
        try {
          text = await page.evaluate(() => document.body?.innerText ?? '');
        } catch {
          // the page may be gone
        }
        throw new Error(`${where}: ${why}\n  page URL: ${page.url()}\n  page text: ${JSON.stringify(cap(text, 2000))}`);
      };
      const requireKind = async (kind, what) => {
        const k = await pageKind(page);
        if (k !== kind) await fail(`expected ${what} here, but the page is of kind "${k}"`);
      };
      // Runs `action` (a click) and waits for the main-frame navigation it starts.
      const navigate = async (action) => {
        const nav = page.waitForNavigation({ waitUntil: 'domcontentloaded', timeout });
        nav.catch(() => {});
        await action();
        return nav;
      };

      let resp = null;
      let fetched = null;
      try {
        switch (st.do) {
          case 'goto':
            resp = await page.goto(st.url, { waitUntil: 'domcontentloaded', timeout });
            break;
          case 'login':
            await requireKind('login', "the provider's login form");
            await page.fill('input[name=login]', st.login ?? 'alice');
            await page.fill('input[name=password]', st.password ?? 'any-password');
            resp = await navigate(() => page.click('form:has(input[name=prompt][value=login]) button[type=submit]'));
            break;
          case 'consent':
            await requireKind('consent', "the provider's consent page");
            resp = await navigate(() => page.click('form:has(input[name=prompt][value=consent]) button[type=submit]'));
            break;
          case 'logout':
            await requireKind('logout', "the provider's end_session confirmation (button[name=logout])");
            resp = await navigate(() => page.click('button[name=logout]'));
            break;
          case 'click':
            resp = await navigate(() => page.click(st.selector));
            break;
          case 'fetch':
            fetched = await page.evaluate(
              async ({ url, method, headers }) => {
                const r = await fetch(url, { method, headers, redirect: 'manual', credentials: 'include' });
                return { url: r.url, status: r.status, type: r.type, text: await r.text() };
              },
              { url: st.url, method: st.method ?? 'GET', headers: st.headers ?? {} },
            );
            break;
        }
      } catch (e) {
        if (e.message.startsWith(where)) throw e;
        await fail(`${e.message.split('\n')[0]}`);
      }

      const out = { i, do: st.do, url: page.url(), status: null, page: null, title: null, text: null, body: null, chain: [], requests: [], cookies: [], ms: 0 };
      if (fetched) {
        out.url = fetched.url || st.url;
        out.status = fetched.status;
        out.body = cap(fetched.text, BODY_CAP);
        out.text = out.body;
        out.page = 'other';
      } else {
        out.status = resp ? resp.status() : null;
        out.page = await pageKind(page);
        out.title = await page.title();
        out.text = cap(await page.evaluate(() => document.body?.innerText ?? ''), TEXT_CAP);
        if (resp) {
          out.body = cap(await resp.text().catch(() => null), BODY_CAP);
          out.chain = await chainOf(resp);
        }
      }
      out.cookies = (await context.cookies()).map(cookieView);
      out.ms = Date.now() - stepStart;
      out.requests = requests;
      result.steps.push(out);

      const problems = [];
      if (st.expect_url !== undefined && out.url !== st.expect_url) {
        problems.push(`URL should be ${st.expect_url}`);
      }
      if (st.expect_url_re !== undefined && !new RegExp(st.expect_url_re).test(out.url)) {
        problems.push(`URL should match /${st.expect_url_re}/`);
      }
      if (st.expect_page !== undefined && out.page !== st.expect_page) {
        problems.push(`page should be of kind "${st.expect_page}", is "${out.page}"`);
      }
      if (st.expect_status !== undefined && out.status !== st.expect_status) {
        problems.push(`status should be ${st.expect_status}, is ${out.status}`);
      }
      if (st.expect_text !== undefined && !(out.text ?? '').includes(st.expect_text) && !(out.body ?? '').includes(st.expect_text)) {
        problems.push(`text should contain ${JSON.stringify(st.expect_text)}`);
      }
      if (problems.length > 0) {
        const chain = out.chain.map((c) => `${c.status} ${c.url}`).join(' -> ');
        throw new Error(
          `${where}: unexpected page: ${problems.join('; ')}\n  landed on: ${out.status} ${out.url} (page kind "${out.page}")`
            + `\n  redirect chain: ${chain || '(none)'}\n  page text: ${JSON.stringify(cap(out.text ?? '', 2000))}`,
        );
      }
    }
    result.cookies = (await context.cookies()).map(cookieView);
  } catch (e) {
    code = 1;
    result.error = e.message;
  }
  try {
    if (context) {
      if (result.cookies.length === 0) result.cookies = (await context.cookies().catch(() => [])).map(cookieView);
      await Promise.race([context.close(), new Promise((r) => setTimeout(r, 5000).unref())]);
    }
  } finally {
    rmSync(userDataDir, { recursive: true, force: true });
  }
  clearTimeout(watchdog);
  return finish(code, result.error);
}

process.exitCode = await main();
