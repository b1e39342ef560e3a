// The ragpool dashboard: reads the API's operator endpoints and follows one server-sent
// events stream (/api/dashboard/events) for live numbers. No framework and no build step;
// every text from the API goes through textContent, never innerHTML.
'use strict';

const KEY = 'ragpool.adminKey';
const STATES = ['queued', 'started', 'delayed', 'finished', 'failed', 'canceled'];
const PAGE = 25;
const ui = { snapshot: null, route: null, pageCursors: [], refreshTimer: null, stream: null, answer: null };

// ---------- small helpers ----------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

function ms(v) {
  if (v === undefined || v === null || Number.isNaN(v)) return '–';
  if (v < 1000) return `${Math.round(v)} ms`;
  if (v < 60000) return `${(v / 1000).toFixed(1)} s`;
  if (v < 3600000) return `${Math.floor(v / 60000)} m ${Math.round((v % 60000) / 1000)} s`;
  return `${(v / 3600000).toFixed(1)} h`;
}

function count(n) {
  return (n ?? 0).toLocaleString('en-US');
}

function rate(v) {
  return v === undefined ? '–' : `${v.toFixed(v < 10 ? 2 : 1)}/s`;
}

function when(value) {
  if (!value) return '–';
  const d = typeof value === 'number' ? new Date(value) : new Date(value);
  return d.toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

function statusBadge(state) {
  return h('span', { class: `status status-${state}` }, state);
}

function notify(text, ok) {
  const box = document.getElementById('notice');
  box.replaceChildren(h('span', { class: ok ? 'ok' : 'bad' }, text));
  clearTimeout(notify.timer);
  notify.timer = setTimeout(() => box.replaceChildren(), 8000);
}

// ---------- the API ----------

class NeedKey extends Error {}

// X-Ragpool-Client marks the page's own requests: a cross-site form cannot send it, so the
// API takes state-changing requests that carry it (see docs/api.md, "Browsers").
function authHeaders() {
  const key = sessionStorage.getItem(KEY);
  const headers = { 'X-Ragpool-Client': 'dashboard' };
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function api(method, path) {
  const response = await fetch(path, { method, headers: authHeaders(), cache: 'no-store' });
  let body = null;
  try {
    body = await response.json();
  } catch (_) {
    body = null;
  }
  if (response.status === 401 || response.status === 403) {
    askForKey(response.status === 403 ? 'That key is not an admin key.' : '');
    throw new NeedKey('an admin key is needed');
  }
  if (!response.ok) {
    const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

function askForKey(reason) {
  const dialog = document.getElementById('key-dialog');
  document.getElementById('key-error').textContent = reason || '';
  if (!dialog.open) dialog.showModal();
  document.getElementById('key-input').focus();
}

// ---------- live stream ----------

// EventSource cannot send an Authorization header, so the stream is read with fetch.
async function follow() {
  const controller = new AbortController();
  ui.stream = controller;
  const live = document.getElementById('live');
  try {
    const response = await fetch('/api/dashboard/events', {
      headers: authHeaders(), signal: controller.signal, cache: 'no-store',
    });
    if (response.status === 401 || response.status === 403) {
      live.className = 'live off';
      live.textContent = 'needs a key';
      askForKey(response.status === 403 ? 'That key is not an admin key.' : '');
      return;
    }
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    live.className = 'live on';
    live.textContent = 'live';
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        let data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) name = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
        }
        if (data) onEvent(name, JSON.parse(data));
      }
    }
  } catch (e) {
    if (controller.signal.aborted) return;
  }
  if (ui.stream !== controller) return;
  live.className = 'live off';
  live.textContent = 'reconnecting…';
  setTimeout(() => { if (ui.stream === controller) follow(); }, 1500);
}

function restartStream() {
  if (ui.stream) ui.stream.abort();
  ui.stream = null;
  follow();
}

function onEvent(name, data) {
  const live = document.getElementById('live');
  if (name === 'snapshot') {
    ui.snapshot = data;
    live.className = 'live on';
    live.textContent = `live · ${when(data.at_ms).slice(11)}`;
    if (ui.route && ui.route.view === 'overview') renderOverview();
  } else if (name === 'unavailable') {
    live.className = 'live off';
    live.textContent = 'Redis unavailable';
  } else if (name === 'changes') {
    const r = ui.route;
    if (!r) return;
    const touches = r.view === 'list'
      ? Boolean(data.counts[r.queue]) || data.lagged
      : r.view === 'task' && (data.lagged || data.recent.some((e) => e.task_id === r.id));
    if (touches) scheduleRefresh();
  }
}

// ---------- a running task's answer ----------

// While the shown task runs, its own events stream carries its answer text as `delta`s; the
// text is kept here so the page's re-renders keep it. Read with fetch (for the key header),
// resuming with Last-Event-ID after a dropped connection, so nothing is shown twice.
function followAnswer(id) {
  if (ui.answer && ui.answer.id === id) return;
  stopAnswer();
  const state = { id, controller: new AbortController(), attempt: 0, text: '', lastId: null };
  ui.answer = state;
  readAnswer(state);
}

function stopAnswer() {
  if (ui.answer) ui.answer.controller.abort();
  ui.answer = null;
}

async function readAnswer(state) {
  for (let failures = 0; failures < 5 && ui.answer === state;) {
    try {
      const headers = authHeaders();
      if (state.lastId) headers['Last-Event-ID'] = state.lastId;
      const response = await fetch(`/api/async/task/${encodeURIComponent(state.id)}/events`, {
        headers, signal: state.controller.signal, cache: 'no-store',
      });
      if (!response.ok) return;
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        failures = 0;
        buffer += decoder.decode(value, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          let name = 'message';
          let data = '';
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) name = line.slice(6).trim();
            else if (line.startsWith('id:')) state.lastId = line.slice(3).trim();
            else if (line.startsWith('data:')) data += line.slice(5).replace(/^ /, '');
          }
          if (name === 'delta' && data) {
            const d = JSON.parse(data);
            // Offset 0: the text starts here (a new attempt, or the text so far).
            if (d.offset === 0) state.text = '';
            state.attempt = d.attempt;
            state.text += d.text;
            showAnswer(state);
          } else if (['finished', 'failed', 'canceled'].includes(name)) {
            return;
          }
        }
      }
    } catch (e) {
      if (state.controller.signal.aborted) return;
      failures += 1;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

function showAnswer(state) {
  const pre = document.getElementById('task-answer');
  if (pre) pre.textContent = state.text;
  const note = document.getElementById('task-answer-attempt');
  if (note) note.textContent = state.attempt > 1 ? ` (attempt ${state.attempt})` : '';
}

// Re-reads the shown list or task soon after changes, at most once a second.
function scheduleRefresh() {
  if (ui.refreshTimer) return;
  ui.refreshTimer = setTimeout(() => {
    ui.refreshTimer = null;
    const r = ui.route;
    if (r.view === 'list' && ui.pageCursors.length === 0) renderList(true);
    if (r.view === 'task') renderTask(true);
  }, 1000);
}

// ---------- actions ----------

function confirmThen(text, action) {
  const dialog = document.getElementById('confirm-dialog');
  document.getElementById('confirm-text').textContent = text;
  const ok = document.getElementById('confirm-ok');
  const cancel = document.getElementById('confirm-cancel');
  const close = () => { ok.onclick = null; cancel.onclick = null; dialog.close(); };
  cancel.onclick = close;
  ok.onclick = async () => {
    close();
    try {
      notify(await action(), true);
    } catch (e) {
      if (!(e instanceof NeedKey)) notify(`Failed: ${e.message}`, false);
    }
    rerender(true);
  };
  dialog.showModal();
}

function retryTask(id) {
  confirmThen(`Retry task ${id}? It goes back on its queue with its attempts reset.`, async () => {
    const t = await api('POST', `/api/async/task/${id}/retry`);
    return `Task ${id} is ${t.status} again.`;
  });
}

function cancelTask(id) {
  confirmThen(`Cancel task ${id}? A running task stops at its worker's next heartbeat.`, async () => {
    const t = await api('DELETE', `/api/async/task/${id}`);
    return t.status === 'canceled'
      ? `Task ${id} is canceled.`
      : `Cancel of task ${id} requested: it stops at its worker's next heartbeat.`;
  });
}

function retryFailed(queue) {
  confirmThen(`Retry every failed task of ${queue}?`, async () => {
    const o = await api('POST', `/api/queue/${encodeURIComponent(queue)}/retry-failed`);
    return `Retried ${count(o.done)} failed tasks of ${queue}` + (o.remaining ? `; ${count(o.remaining)} left, run it again.` : '.');
  });
}

function purgeFinished(queue) {
  confirmThen(`Delete every finished task of ${queue} and its result now? This cannot be undone.`, async () => {
    const o = await api('POST', `/api/queue/${encodeURIComponent(queue)}/purge?state=finished`);
    return `Purged ${count(o.done)} finished tasks of ${queue}` + (o.remaining ? `; ${count(o.remaining)} left, run it again.` : '.');
  });
}

function taskActions(t) {
  const id = t.task_id;
  return h('span', { class: 'actions' },
    t.status === 'failed' && h('button', { class: 'small', type: 'button', 'data-action': 'retry', onclick: () => retryTask(id) }, 'Retry'),
    ['queued', 'delayed', 'started'].includes(t.status) && !t.cancel_requested &&
      h('button', { class: 'small danger', type: 'button', 'data-action': 'cancel', onclick: () => cancelTask(id) }, 'Cancel'));
}

// ---------- views ----------

function route() {
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'queue' && parts[1]) {
    return { view: 'list', queue: parts[1], state: STATES.includes(parts[2]) ? parts[2] : 'queued' };
  }
  if (parts[0] === 'task' && parts[1]) return { view: 'task', id: parts[1] };
  return { view: 'overview' };
}

function rerender(quiet) {
  const r = ui.route;
  if (r.view === 'overview') return refreshOverview();
  if (r.view === 'list') return renderList(quiet);
  return renderTask(quiet);
}

async function refreshOverview() {
  try {
    ui.snapshot = await api('GET', '/api/dashboard/snapshot');
    renderOverview();
  } catch (e) {
    if (!(e instanceof NeedKey)) showError(e);
  }
}

function showError(e) {
  document.getElementById('view').replaceChildren(
    h('p', { class: 'empty' }, `Could not load: ${e.message}. It is retried with the next update.`));
}

// Bytes in the largest unit that keeps a number of at least 1.
function size(bytes) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let n = bytes, u = 0;
  while (n >= 1024 && u < units.length - 1) { n /= 1024; u += 1; }
  return u === 0 ? `${n} B` : `${n.toFixed(1)} ${units[u]}`;
}

function queueRow(q) {
  const link = (state, n) => h('a', { href: `#/queue/${encodeURIComponent(q.queue)}/${state}` }, count(n));
  const rates = q.rates || {};
  return h('tr', { 'data-queue': q.queue },
    h('td', {}, h('a', { href: `#/queue/${encodeURIComponent(q.queue)}/queued` }, q.queue)),
    STATES.map((s) => h('td', { class: 'num', 'data-count': s }, link(s, q[s]))),
    h('td', { class: 'num hide-narrow' }, rate(rates.enqueued_per_second)),
    h('td', { class: 'num hide-narrow' }, rate(rates.finished_per_second)),
    h('td', { class: 'num' }, `${ms(q.wait.p50_ms)} / ${ms(q.wait.p95_ms)}`),
    h('td', { class: 'num hide-narrow' }, `${ms(q.processing.p50_ms)} / ${ms(q.processing.p95_ms)}`),
    h('td', { class: 'num' }, q.queued ? ms(q.oldest_queued_age_ms) : '–'),
    h('td', { class: 'num hide-narrow', 'data-field': 'queued-payload' }, size(q.queued_payload_bytes || 0)),
    h('td', {}, h('span', { class: 'actions' },
      h('button', { class: 'small', type: 'button', disabled: !q.failed, 'data-action': 'retry-failed', onclick: () => retryFailed(q.queue) }, 'Retry failed'),
      h('button', { class: 'small danger', type: 'button', disabled: !q.finished, 'data-action': 'purge', onclick: () => purgeFinished(q.queue) }, 'Purge'))));
}

// A line chart of per-minute series over the last hour, drawn as inline SVG.
function chart(title, points, series, unit) {
  const w = 600, hgt = 120, pad = 4;
  const box = svg('svg', { viewBox: `0 0 ${w} ${hgt}`, preserveAspectRatio: 'none', role: 'img', 'aria-label': title });
  const now = ui.snapshot ? ui.snapshot.at_ms : Date.now();
  const from = now - 3600000;
  const max = Math.max(1, ...points.flatMap((p) => series.map((s) => p[s.field] || 0)));
  for (const s of series) {
    const coords = points.filter((p) => p.at_ms >= from).map((p) => {
      const x = pad + ((p.at_ms - from) / 3600000) * (w - 2 * pad);
      const y = hgt - pad - ((p[s.field] || 0) / max) * (hgt - 2 * pad);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    if (coords.length === 1) coords.push(coords[0].replace(/^[\d.]+/, (x) => String(Number(x) + 4)));
    box.append(svg('polyline', { points: coords.join(' '), fill: 'none', stroke: s.color, 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
  }
  const legend = h('div', { class: 'legend' },
    series.map((s) => h('span', { class: s.swatch }, `— ${s.label}`)),
    h('span', {}, `max ${unit === 'ms' ? ms(max) : `${max.toFixed(1)} ${unit}`}`),
    points.length === 0 && h('span', {}, 'no history yet: a point per minute appears while a dashboard is open'));
  return h('div', { class: 'chart' }, h('strong', {}, title), box, legend);
}

function sumHistory(queues) {
  const byMinute = new Map();
  for (const q of queues) {
    for (const p of q.history) {
      const m = byMinute.get(p.at_ms) || { at_ms: p.at_ms, enqueued: 0, finished: 0, failed: 0, wait_p50: 0, wait_p95: 0 };
      m.enqueued += p.enqueued_per_minute;
      m.finished += p.finished_per_minute;
      m.failed += p.failed_per_minute;
      m.wait_p50 = Math.max(m.wait_p50, p.wait_p50_ms);
      m.wait_p95 = Math.max(m.wait_p95, p.wait_p95_ms);
      byMinute.set(p.at_ms, m);
    }
  }
  return [...byMinute.values()].sort((a, b) => a.at_ms - b.at_ms);
}

function workersTable(workers) {
  if (workers.length === 0) {
    return h('p', { class: 'empty', id: 'no-workers' }, 'No workers: start one with ',
      h('code', {}, 'ragpool-executor --redis-url redis://…'), ' (or ', h('code', {}, 'scripts/dev.sh'),
      ' locally); in Kubernetes, create a RagWorkerPool.');
  }
  return h('div', { class: 'scroll' }, h('table', { id: 'workers' },
    h('thead', {}, h('tr', {},
      h('th', {}, 'worker'), h('th', { class: 'hide-narrow' }, 'host / pod'), h('th', {}, 'queues'),
      h('th', { class: 'num' }, 'in flight'), h('th', { class: 'num' }, 'utilisation'),
      h('th', { class: 'num' }, 'heartbeat'), h('th', {}, 'state'))),
    h('tbody', {}, workers.map((w) => h('tr', { 'data-worker': w.id },
      h('td', { class: 'id' }, w.id),
      h('td', { class: 'hide-narrow' }, w.pod ? `${w.host} / ${w.pod}` : w.host),
      h('td', {}, w.queues.join(', ')),
      h('td', { class: 'num' }, `${w.in_flight} of ${w.concurrency}`),
      h('td', { class: 'num' }, `${Math.round(w.utilization * 100)} %`),
      h('td', { class: 'num' }, `${w.seconds_since_heartbeat.toFixed(1)} s ago`),
      h('td', {}, w.silent ? h('span', { class: 'silent' }, 'silent') : w.draining ? 'draining' : 'ok'))))));
}

// Each API key's queued and started tasks over every queue, by key name (the snapshot never
// carries a key). Absent without keys, or while no key has tasks.
function ownersSection(owners) {
  if (!owners || owners.length === 0) return [];
  return [
    h('h2', {}, 'Keys'),
    h('section', { class: 'card' }, h('div', { class: 'scroll' }, h('table', { id: 'owners' },
      h('thead', {}, h('tr', {},
        h('th', {}, 'key'), h('th', { class: 'num' }, 'queued'), h('th', { class: 'num' }, 'started'),
        h('th', { class: 'num' }, 'max in flight'))),
      h('tbody', {}, owners.map((o) => h('tr', { 'data-owner': o.owner },
        h('td', {}, o.owner),
        h('td', { class: 'num', 'data-count': 'queued' }, count(o.queued)),
        h('td', { class: 'num', 'data-count': 'started' }, count(o.started)),
        h('td', { class: 'num' }, o.max_in_flight === undefined ? '–' : count(o.max_in_flight)))))))),
  ];
}

function renderOverview() {
  const s = ui.snapshot;
  if (!s) return;
  const history = sumHistory(s.queues);
  const view = document.getElementById('view');
  const total = s.queues.reduce((n, q) => n + q.queued + q.started + q.delayed + q.finished + q.failed + q.canceled, 0);
  view.replaceChildren(
    h('h1', {}, 'Queues'),
    h('section', { class: 'card' },
      h('div', { class: 'scroll' }, h('table', { id: 'queues' },
        h('thead', {}, h('tr', {}, h('th', {}, 'queue'), STATES.map((st) => h('th', { class: 'num' }, st)),
          h('th', { class: 'num hide-narrow' }, 'in'), h('th', { class: 'num hide-narrow' }, 'done'),
          h('th', { class: 'num' }, 'wait p50 / p95'), h('th', { class: 'num hide-narrow' }, 'run p50 / p95'),
          h('th', { class: 'num' }, 'oldest queued'), h('th', { class: 'num hide-narrow' }, 'queued payloads'), h('th', {}, ''))),
        h('tbody', {}, s.queues.map(queueRow)))),
      total === 0 && h('p', { class: 'empty' }, 'No tasks yet: submit one with ',
        h('code', {}, 'ragpool submit query "why is the sky blue?"'), ' or POST /api/async/query.')),
    h('section', { class: 'card charts' },
      chart('Throughput, last hour (tasks/min)', history, [
        { field: 'enqueued', label: 'submitted', color: '#2457c5', swatch: 'swatch-a' },
        { field: 'finished', label: 'finished', color: '#1d7f46', swatch: 'swatch-b' },
        { field: 'failed', label: 'failed', color: '#b3261e', swatch: 'swatch-c' },
      ], '/min'),
      chart('Queue wait, last hour', history, [
        { field: 'wait_p50', label: 'p50', color: '#2457c5', swatch: 'swatch-a' },
        { field: 'wait_p95', label: 'p95', color: '#a35b00', swatch: 'swatch-d' },
      ], 'ms')),
    ...ownersSection(s.owners),
    h('h2', {}, 'Workers', s.utilization !== undefined ? ` · ${Math.round(s.utilization * 100)} % busy` : ''),
    h('section', { class: 'card' }, workersTable(s.workers)));
}

async function renderList(quiet) {
  const r = ui.route;
  const cursor = ui.pageCursors[ui.pageCursors.length - 1];
  let page;
  try {
    const q = `state=${r.state}&limit=${PAGE}` + (cursor ? `&cursor=${encodeURIComponent(cursor)}` : '');
    page = await api('GET', `/api/queue/${encodeURIComponent(r.queue)}/tasks?${q}`);
  } catch (e) {
    if (!(e instanceof NeedKey) && !quiet) showError(e);
    return;
  }
  if (ui.route !== r) return;
  const tabs = h('nav', { class: 'tabs' }, STATES.map((s) =>
    h('a', { href: `#/queue/${encodeURIComponent(r.queue)}/${s}`, class: s === r.state ? 'current' : '' }, s)));
  const rows = page.tasks.map((t) => h('tr', { 'data-task': t.task_id },
    h('td', { class: 'id' }, h('a', { href: `#/task/${t.task_id}` }, t.task_id)),
    h('td', { class: 'hide-narrow' }, t.kind),
    h('td', {}, statusBadge(t.status)),
    h('td', { class: 'num hide-narrow' }, when(t.enqueued_at_ms)),
    h('td', { class: 'num' }, t.finished_at_ms ? when(t.finished_at_ms) : t.started_at_ms ? when(t.started_at_ms) : '–'),
    h('td', { class: 'num' }, `${t.attempts} of ${t.max_attempts}`),
    h('td', { class: 'err' }, t.error_kind ? `${t.error_kind}: ${t.error_message || ''}` : ''),
    h('td', {}, taskActions(t))));
  const pageNo = ui.pageCursors.length + 1;
  document.getElementById('view').replaceChildren(
    h('h1', {}, `${r.queue} · ${r.state} · ${count(page.total)} tasks`),
    tabs,
    h('section', { class: 'card' },
      page.tasks.length === 0
        ? h('p', { class: 'empty', id: 'empty-list' }, emptyListText(r))
        : h('div', { class: 'scroll' }, h('table', { id: 'tasks' },
          h('thead', {}, h('tr', {}, h('th', {}, 'task'), h('th', { class: 'hide-narrow' }, 'kind'), h('th', {}, 'status'),
            h('th', { class: 'num hide-narrow' }, 'enqueued'), h('th', { class: 'num' }, 'started / ended'),
            h('th', { class: 'num' }, 'attempts'), h('th', {}, 'error'), h('th', {}, ''))),
          h('tbody', {}, rows))),
      h('div', { class: 'pager' },
        h('button', { type: 'button', disabled: pageNo === 1, onclick: () => { ui.pageCursors.pop(); renderList(); } }, '← Newer'),
        h('span', {}, `page ${pageNo}`),
        h('button', { type: 'button', disabled: !page.next_cursor, onclick: () => { ui.pageCursors.push(page.next_cursor); renderList(); } }, 'Older →'))));
}

function emptyListText(r) {
  switch (r.state) {
    case 'queued': return `Nothing is waiting in ${r.queue}. Submitted tasks appear here until a worker takes them.`;
    case 'started': return `No task of ${r.queue} is running. If tasks are queued, check that a worker serves this queue.`;
    case 'delayed': return `No task of ${r.queue} is waiting out a retry backoff.`;
    case 'finished': return `No finished tasks of ${r.queue} are kept. Results stay for the queue's result TTL.`;
    case 'failed': return `No failed tasks in ${r.queue}.`;
    default: return `No canceled tasks in ${r.queue}.`;
  }
}

async function renderTask(quiet) {
  const r = ui.route;
  let t;
  try {
    t = await api('GET', `/api/async/task/${encodeURIComponent(r.id)}/detail`);
  } catch (e) {
    if (e instanceof NeedKey || (quiet && e.status !== 404)) return;
    document.getElementById('view').replaceChildren(h('h1', {}, 'Task'),
      h('p', { class: 'empty', id: 'task-missing' }, e.status === 404 || e.status === 400
        ? `No task ${r.id}: unknown, or expired after its TTL.` : `Could not load: ${e.message}`));
    return;
  }
  if (ui.route !== r) return;
  if (t.status === 'started') followAnswer(t.task_id);
  else stopAnswer();
  const answer = ui.answer && ui.answer.id === t.task_id ? ui.answer : null;
  const field = (name, value) => value === undefined || value === null || value === '' ? [] : [h('dt', {}, name), h('dd', {}, value)];
  const p = t.payload;
  document.getElementById('view').replaceChildren(
    h('h1', {}, 'Task ', h('span', { class: 'id' }, t.task_id)),
    h('section', { class: 'card', id: 'task' },
      h('dl', { class: 'fields' },
        field('status', statusBadge(t.status)),
        field('kind', t.kind),
        field('queue', h('a', { href: `#/queue/${encodeURIComponent(t.queue)}/${t.status}` }, t.queue)),
        field('position', t.position !== undefined ? `${t.position} (0 = next)` : null),
        field('attempts', `${t.attempts} of ${t.max_attempts}`),
        field('progress', `${t.progress.percent} %${t.progress.message ? ` · ${t.progress.message}` : ''}`),
        field('enqueued', when(t.enqueued_at)),
        field('started', t.started_at && when(t.started_at)),
        field('ended', t.finished_at && when(t.finished_at)),
        field('retry at', t.retry_at && when(t.retry_at)),
        field('expires', t.expires_at && when(t.expires_at)),
        field('worker', t.worker),
        field('cancel', t.cancel_requested ? 'requested' : null),
        field('error', t.error && h('span', { class: 'err', id: 'task-error' }, `${t.error.kind}: ${t.error.message}`))),
      h('div', { class: 'actions' }, taskActions(t))),
    h('h2', {}, 'Payload'),
    h('section', { class: 'card' }, h('dl', { class: 'fields' },
      field('question', p.question), field('prompt', p.prompt), field('context', p.context),
      field('context size', p.context_bytes !== undefined ? `${count(p.context_bytes)} bytes` : null),
      field('context task', p.context_task_id), field('top k', p.top_k),
      field('image', p.image_bytes !== undefined
        ? `inline, ${count(p.image_bytes)} bytes${p.image_type ? `, ${p.image_type}` : ''} (not shown)` : p.image_url),
      field('stored input', `${size(p.input_bytes || 0)}${p.input_sha256 ? `, sha256 ${p.input_sha256.slice(0, 16)}…` : ''}`))),
    // replaceChildren, unlike h(), prints `false`: the result's nodes are spread in or not.
    ...(answer ? [h('h2', {}, 'Answer so far', h('span', { id: 'task-answer-attempt' },
      answer.attempt > 1 ? ` (attempt ${answer.attempt})` : '')),
    h('section', { class: 'card' }, h('pre', { id: 'task-answer' }, answer.text))] : []),
    ...(t.result !== undefined ? [h('h2', {}, 'Result'),
      h('section', { class: 'card' }, h('pre', { id: 'task-result' }, JSON.stringify(t.result, null, 2)))] : []));
}

function navigate() {
  const r = route();
  const same = ui.route && JSON.stringify(ui.route) === JSON.stringify(r);
  ui.route = r;
  if (!same) ui.pageCursors = [];
  if (r.view !== 'task') stopAnswer();
  document.getElementById('view').replaceChildren(h('p', { class: 'empty' }, 'Loading…'));
  if (r.view === 'overview') {
    if (ui.snapshot) renderOverview();
    refreshOverview();
  } else if (r.view === 'list') {
    renderList();
  } else {
    renderTask();
  }
}

function start() {
  document.getElementById('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const value = document.getElementById('key-input').value.trim();
    if (!value) return;
    sessionStorage.setItem(KEY, value);
    document.getElementById('key-input').value = '';
    document.getElementById('key-dialog').close();
    document.getElementById('forget-key').hidden = false;
    restartStream();
    navigate();
  });
  document.getElementById('forget-key').addEventListener('click', () => {
    sessionStorage.removeItem(KEY);
    location.reload();
  });
  document.getElementById('forget-key').hidden = !sessionStorage.getItem(KEY);
  document.getElementById('search').addEventListener('submit', (e) => {
    e.preventDefault();
    const id = document.getElementById('search-id').value.trim().toLowerCase();
    if (id) location.hash = `#/task/${encodeURIComponent(id)}`;
  });
  window.addEventListener('hashchange', navigate);
  navigate();
  follow();
}

start();
