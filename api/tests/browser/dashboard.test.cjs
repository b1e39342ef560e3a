// The dashboard in a real headless Chromium, against a real ragpool-api, executors and
// redis-server (started by scripts/dashboard-check.sh, which sets the environment below).
//
// What it checks: the page loads without console errors; submitted tasks show as queued
// and then finished; a task that fails shows its error, and retry from the page requeues it
// and it finishes; cancel from the page ends a queued task, whose page (no result yet) shows
// no stray `false`; the workers table lists the running executors; a task whose answer a model
// server streams shows the text growing on its page while it runs, then the result; a page of another origin
// cannot purge through a form or a no-cors fetch; on an API with keys, the table of keys shows
// each key's queued and started tasks by the key's name, never the key. It saves a screenshot
// of the main page.
//
// Environment: API (base URL), KEYED_API (an API with the keys below, on its own key prefix,
// no executor), REDIS_URL, EXECUTOR (binary), WORK (scratch folder),
// PLAYWRIGHT (folder holding node_modules/playwright-core), SCREENSHOT (PNG path),
// CHROMIUM (default /usr/bin/chromium).
'use strict';

const path = require('node:path');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const assert = require('node:assert/strict');

const { chromium } = require(path.join(process.env.PLAYWRIGHT, 'node_modules', 'playwright-core'));

const API = process.env.API;
const WORK = process.env.WORK;
const children = new Map();

// Starts an executor serving `queues`; extra flags pick its backend.
function executor(id, queues, extra) {
  const log = fs.openSync(path.join(WORK, `${id}.log`), 'a');
  const child = spawn(process.env.EXECUTOR, [
    '--worker-id', id, '--queues', queues, '--metrics-listen', '127.0.0.1:0',
    '--maintenance-seconds', '1', ...extra,
  ], {
    env: { PATH: process.env.PATH, RAGPOOL_REDIS_URL: process.env.REDIS_URL, RUST_LOG: 'info' },
    stdio: ['ignore', log, log],
  });
  children.set(id, child);
  return child;
}

async function stop(id) {
  const child = children.get(id);
  children.delete(id);
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  await exited;
}

async function submit(path_, body) {
  const r = await fetch(`${API}${path_}`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const json = await r.json();
  assert.equal(r.status, 202, JSON.stringify(json));
  return json.task_id;
}

// The smallest valid PNG, for an image task.
const PNG = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==';

async function confirm(page) {
  const dialog = page.locator('#confirm-dialog');
  await dialog.waitFor({ state: 'visible' });
  await page.click('#confirm-ok');
  await dialog.waitFor({ state: 'hidden' });
}

// The finished tasks of full_query, as the API counts them.
async function finishedCount() {
  const r = await fetch(`${API}/api/queue/full_query/tasks?state=finished&limit=1`);
  return (await r.json()).total;
}

// An OpenAI-compatible model server on loopback that streams an answer in pieces: the first
// three at once, the last only after `release()`.
async function streamingModel() {
  let release;
  const released = new Promise((resolve) => { release = resolve; });
  const chunk = (text) => `data: ${JSON.stringify({ model: 'served-model', choices: [{ index: 0, delta: { content: text } }] })}\n\n`;
  const server = http.createServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'text/event-stream' });
    for (const piece of ['The ', 'answer ', 'grows']) res.write(chunk(piece));
    released.then(() => {
      res.write(chunk(' here.'));
      res.end('data: [DONE]\n\n');
    });
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${server.address().port}`, release, server };
}

// A task page shows the answer text growing while the model generates it, then the result.
async function streamedAnswer(browser, problems) {
  const model = await streamingModel();
  await stop('exec-answers');
  executor('exec-stream', 'answer_generation',
    ['--backend', 'openai', '--openai-base-url', `${model.url}/v1`, '--openai-model', 'answer-model']);
  const page = await browser.newPage();
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  try {
    const id = await submit('/api/async/complete-answer', { question: 'what grows?' });
    await page.goto(`${API}/dashboard#/task/${id}`);
    await page.waitForFunction(() => {
      const pre = document.querySelector('#task-answer');
      return pre && pre.textContent === 'The answer grows';
    });
    assert.equal(await page.$('#task-result'), null, 'no result while the answer is generated');
    console.log('ok: a running task\'s page shows its answer so far');
    model.release();
    await page.waitForSelector('#task .status-finished');
    await page.waitForSelector('#task-result');
    const result = JSON.parse(await page.textContent('#task-result'));
    assert.equal(result.answer, 'The answer grows here.');
    assert.equal(await page.$('#task-answer'), null, 'the finished task shows its result instead');
    console.log('ok: the answer grew to the stored result');
  } finally {
    await page.close();
    model.server.closeAllConnections();
    model.server.close();
    await stop('exec-stream');
  }
}

// A page of another origin (another port) that posts a form to the API's purge and fires a
// no-cors fetch at it, as a malicious site would: the API refuses both, nothing is purged.
async function crossSiteForms(browser) {
  const purge = `${API}/api/queue/full_query/purge?state=finished`;
  const evil = http.createServer((req, res) => {
    res.setHeader('content-type', 'text/html');
    res.end(`<!doctype html><form id="f" method="POST" action="${purge}">
      <input name="confirm" value="1"></form>
      <script>fetch(${JSON.stringify(purge)}, { method: 'POST', mode: 'no-cors' })
        .finally(() => document.getElementById('f').submit());</script>`);
  });
  await new Promise((resolve) => evil.listen(0, '127.0.0.1', resolve));
  try {
    const before = await finishedCount();
    assert.ok(before > 0, 'finished tasks to purge');
    const page = await browser.newPage();
    await page.goto(`http://127.0.0.1:${evil.address().port}/`);
    // The form's answer replaces the page: the API's refusal.
    await page.waitForURL(purge);
    const answer = await page.textContent('body');
    assert.match(answer, /origin_not_allowed/, answer);
    await page.close();
    assert.equal(await finishedCount(), before, 'nothing was purged');
    console.log(`ok: a cross-site form and no-cors fetch to purge were refused (${before} finished tasks kept)`);
  } finally {
    evil.close();
  }
}

// The keys of KEYED_API (scripts/dashboard-check.sh).
const ALICE_KEY = 'alice-key-0123456789';
const ROOT_KEY = 'root-key-0123456789a';

// On the API with keys: alice's queued tasks in the table of keys, under her key's name.
async function ownersTable(browser, problems) {
  const api = process.env.KEYED_API;
  for (let i = 0; i < 3; i++) {
    const r = await fetch(`${api}/api/async/query`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${ALICE_KEY}` },
      body: JSON.stringify({ question: `alice's question ${i}` }),
    });
    assert.equal(r.status, 202, await r.text());
  }
  const page = await browser.newPage();
  page.setDefaultTimeout(20000);
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  // The admin key as the key dialog would have stored it, so no request goes without it.
  await page.addInitScript((key) => sessionStorage.setItem('ragpool.adminKey', key), ROOT_KEY);
  await page.goto(`${api}/dashboard#/`);
  await page.waitForFunction(() => {
    const cell = document.querySelector('#owners tr[data-owner="alice"] td[data-count="queued"]');
    return cell && cell.textContent === '3';
  });
  const text = await page.textContent('#owners');
  assert.ok(text.includes('alice') && !text.includes(ALICE_KEY), text);
  const started = await page.textContent('#owners tr[data-owner="alice"] td[data-count="started"]');
  assert.equal(started, '0');
  assert.ok(!(await page.content()).includes(ALICE_KEY), 'no key in the page');
  await page.close();
  console.log('ok: the table of keys shows alice\'s 3 queued tasks under her name');
}

async function main() {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--no-first-run'],
  });
  const problems = [];
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
    page.setDefaultTimeout(20000);
    page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
    page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
    page.on('requestfailed', (r) => {
      // Event streams are aborted on purpose when the page navigates away or closes.
      if (!r.url().endsWith('/events')) problems.push(`request failed: ${r.url()}`);
    });

    // Only the failing executor runs: full_query tasks wait in their queue.
    executor('exec-failing', 'answer_generation', ['--backend', 'http', '--http-url', process.env.CLOSED_URL]);
    await page.goto(`${API}/dashboard`);
    await page.waitForSelector('#queues tr[data-queue="full_query"]');
    await page.waitForSelector('#workers tr[data-worker="exec-failing"]');
    console.log('ok: the main page lists the queues and the running executor');

    // Submitted tasks appear as queued, then finished once an executor serves the queue.
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push(await submit('/api/async/query', { question: `what is ragpool? (${i})` }));
    await page.goto(`${API}/dashboard#/queue/full_query/queued`);
    for (const id of ids) {
      await page.waitForSelector(`#tasks tr[data-task="${id}"] .status-queued`);
    }
    console.log('ok: submitted tasks are listed as queued');
    executor('exec-builtin', 'full_query', ['--backend', 'builtin']);
    // Live updates empty the queued list without a reload.
    await page.waitForSelector('#empty-list');
    await page.goto(`${API}/dashboard#/queue/full_query/finished`);
    for (const id of ids) {
      await page.waitForSelector(`#tasks tr[data-task="${id}"] .status-finished`);
    }
    await page.click(`#tasks tr[data-task="${ids[0]}"] a`);
    await page.waitForSelector('#task-result');
    console.log('ok: the tasks moved to finished, and a task page shows the result');

    // A task that fails shows its error; retry requeues it and, with a working executor on
    // its queue, it finishes.
    const failing = await submit('/api/async/complete-answer', { question: 'why does this fail?', context: 'none' });
    await page.goto(`${API}/dashboard#/task/${failing}`);
    await page.waitForSelector('#task .status-failed');
    const error = await page.textContent('#task-error');
    assert.match(error, /\w+: .+/, error);
    console.log(`ok: the failed task shows its error (${error.trim()})`);
    await stop('exec-failing');
    executor('exec-answers', 'answer_generation', ['--backend', 'builtin']);
    await page.click('#task button[data-action="retry"]');
    await confirm(page);
    await page.waitForSelector('#notice .ok');
    await page.waitForSelector('#task .status-finished');
    console.log('ok: retry from the page requeued the task and it finished');

    // Cancel a queued task (no executor serves image_analysis).
    const waiting = await submit('/api/async/analyze-image', { image: PNG, prompt: 'what is it?' });
    await page.goto(`${API}/dashboard#/task/${waiting}`);
    await page.waitForSelector('#task .status-queued');
    const payload = await page.textContent('main');
    assert.ok(!payload.includes(PNG), 'the image data is not shown');
    assert.ok(!/false|true/.test(payload), `a task without a result shows no stray booleans: ${payload}`);
    await page.click('#task button[data-action="cancel"]');
    await confirm(page);
    await page.waitForSelector('#task .status-canceled');
    console.log('ok: cancel from the page ended the queued task');

    // A realistic main page for the screenshot: some traffic, a few failures kept.
    for (let i = 0; i < 12; i++) await submit('/api/async/query', { question: `question ${i}` });
    for (let i = 0; i < 4; i++) await submit('/api/async/analyze-image', { image: PNG });
    await page.goto(`${API}/dashboard#/`);
    await page.waitForSelector('#workers tr[data-worker="exec-builtin"]');
    await page.waitForFunction(() => {
      const cell = document.querySelector('#queues tr[data-queue="full_query"] td[data-count="finished"]');
      return cell && Number(cell.textContent.replace(/,/g, '')) >= 15;
    });
    const workers = await page.$$eval('#workers tr[data-worker]', (rows) => rows.map((r) => r.dataset.worker));
    assert.deepEqual(workers.sort(), ['exec-answers', 'exec-builtin']);
    console.log(`ok: the workers table lists ${workers.join(', ')}`);
    fs.mkdirSync(path.dirname(process.env.SCREENSHOT), { recursive: true });
    await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
    console.log(`saved ${process.env.SCREENSHOT}`);

    // A phone-sized window shows the same page without horizontal overflow of the body.
    await page.setViewportSize({ width: 390, height: 800 });
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
    console.log('ok: the page fits a phone-width window');
    assert.equal(await page.$('#owners'), null, 'no table of keys without keys');
    await page.close();
    await streamedAnswer(browser, problems);
    await crossSiteForms(browser);
    await ownersTable(browser, problems);
  } finally {
    await browser.close();
    for (const id of [...children.keys()]) await stop(id);
  }
  assert.deepEqual(problems, [], problems.join('\n'));
  console.log('ok: no console errors');
}

main().catch(async (e) => {
  console.error(e && e.stack ? e.stack : e);
  for (const child of children.values()) child.kill('SIGKILL');
  process.exit(1);
});
