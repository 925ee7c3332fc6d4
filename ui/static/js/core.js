// Core of the RunOS UI: configuration from the serving page, the API fetch
// helper, a tiny DOM builder, formatters and the page registry. Pages are
// ES modules that call registerPage; nothing here knows about any page.

const cfgEl = document.getElementById('runos-config');
export const config = Object.assign({base: './', mode: 'agent', node: '', login_url: 'login'},
  cfgEl ? JSON.parse(cfgEl.textContent) : {});

// Every URL is relative to the document's <base>: "/" on an agent,
// "/clusters/ID/" in the cloud console.
export function urlFor(path) {
  return new URL(path, document.baseURI).toString();
}

let csrfToken = '';
export function setCSRF(t) { csrfToken = t || ''; }

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let leaving = false;
// toLogin leaves for the sign-in page, keeping the #/route to come back to.
export function toLogin() {
  if (leaving) return;
  leaving = true;
  location.replace(urlFor(config.login_url) + location.hash);
}

// api calls the agent's API (path relative to the base, e.g. "v1/nodes").
// Changes carry the session's CSRF token; 401 goes to the sign-in page;
// errors become ApiError with the server's message.
export async function api(path, {method = 'GET', body, signal} = {}) {
  const headers = {Accept: 'application/json'};
  if (method !== 'GET' && method !== 'HEAD') headers['X-CSRF-Token'] = csrfToken;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let resp;
  try {
    resp = await fetch(urlFor(path), {
      method, headers, signal, credentials: 'same-origin', cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'cannot reach the agent (' + e.message + ')');
  }
  if (resp.status === 401) {
    toLogin();
    throw new ApiError(401, 'not signed in');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!resp.ok) {
    throw new ApiError(resp.status, (data && data.error) || (resp.status + ' ' + resp.statusText));
  }
  return data;
}

// h builds an element: h('a', {href: '#/x', class: 'y', onclick: f}, 'text', child).
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVGNS = 'http://www.w3.org/2000/svg';
// s builds an SVG element.
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVGNS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

// --- formatting ---

export function fmtBytes(n) {
  if (!n) return '0 B';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (n >= 100 || i === 0 ? n.toFixed(0) : n.toFixed(1)) + ' ' + u[i];
}

export function fmtAge(seconds) {
  if (seconds === undefined || seconds === null || seconds < 0) return 'never';
  if (seconds < 1) return 'now';
  if (seconds < 60) return Math.round(seconds) + ' s';
  if (seconds < 3600) return Math.round(seconds / 60) + ' min';
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + ' h';
  return (seconds / 86400).toFixed(1) + ' d';
}

// fmtAgo is "just now" or "12 s ago".
export function fmtAgo(seconds) {
  if (seconds === undefined || seconds === null || seconds < 0) return 'never';
  return seconds < 1 ? 'just now' : fmtAge(seconds) + ' ago';
}

export function fmtSince(iso) {
  const t = Date.parse(iso);
  if (!t) return '';
  return fmtAgo((Date.now() - t) / 1000);
}

// fmtIn is "in 12 s" for a time ahead ("now" once it has passed).
export function fmtIn(iso) {
  const t = Date.parse(iso);
  if (!t) return '';
  const s = (t - Date.now()) / 1000;
  return s < 1 ? 'now' : 'in ' + fmtAge(s);
}

export function fmtTime(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return '';
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString() : d.toLocaleString();
}

export function fmtRTT(ms) {
  if (!ms) return '–';
  return ms < 10 ? ms.toFixed(2) + ' ms' : ms.toFixed(1) + ' ms';
}

export function pct(used, total) {
  return total ? (100 * used / total) : 0;
}

// meter is a small usage bar with its label.
export function meter(percent, label) {
  const bar = h('span', {class: 'meter-fill'});
  bar.style.width = Math.max(0, Math.min(100, percent)).toFixed(1) + '%';
  const level = percent >= 90 ? 'bad' : percent >= 75 ? 'warn' : 'ok';
  return h('span', {class: 'meter ' + level, title: label},
    h('span', {class: 'meter-track'}, bar), h('span', {class: 'meter-label'}, label));
}

export function badge(health) {
  return h('span', {class: 'badge ' + (health || 'unknown')}, health || 'unknown');
}

// copyButton copies text (clipboard API on 127.0.0.1, selection fallback).
export function copyButton(getText, label = 'Copy') {
  const btn = h('button', {class: 'btn small', type: 'button'}, label);
  btn.addEventListener('click', async () => {
    const text = getText();
    let ok = false;
    try {
      await navigator.clipboard.writeText(text);
      ok = true;
    } catch (e) {
      const ta = h('textarea', {class: 'offscreen'});
      ta.value = text;
      document.body.append(ta);
      ta.select();
      try { ok = document.execCommand('copy'); } catch (e2) { ok = false; }
      ta.remove();
    }
    btn.textContent = ok ? 'Copied' : 'Select and copy';
    setTimeout(() => { btn.textContent = label; }, 1500);
  });
  return btn;
}

// confirmAction is a button that asks before it acts, in place (no modal
// dialog): label → question with "Yes" and "Cancel" → onConfirm(). Errors
// show next to the button. Used for every destructive action.
export function confirmAction(label, question, onConfirm) {
  const wrap = h('span', {class: 'confirm'});
  const start = h('button', {class: 'btn small danger', type: 'button', 'data-action': 'ask'}, label);
  const yes = h('button', {class: 'btn small danger solid', type: 'button', 'data-action': 'confirm'}, 'Yes, ' + label.toLowerCase());
  const no = h('button', {class: 'btn small', type: 'button', 'data-action': 'cancel'}, 'Cancel');
  start.addEventListener('click', () => {
    wrap.replaceChildren(h('span', {class: 'confirm-q'}, question), yes, no);
    no.focus();
  });
  no.addEventListener('click', () => wrap.replaceChildren(start));
  yes.addEventListener('click', async () => {
    yes.disabled = no.disabled = true;
    try {
      await onConfirm();
    } catch (e) {
      wrap.replaceChildren(start, errorBox(e));
    } finally {
      yes.disabled = no.disabled = false;
    }
  });
  wrap.append(start);
  return wrap;
}

// viaCloud waits for a cloud command's result: in the cloud console a write
// becomes a command (202 with its record) the cluster applies once when it
// is connected. onWait(rec) runs while it is pending.
export async function viaCloud(rec, signal, onWait = () => {}) {
  for (;;) {
    if (rec.state === 'done') return rec.result.data;
    if (rec.state === 'failed') throw new Error('the cluster refused the command: ' + rec.result.error);
    onWait(rec);
    await new Promise((res) => setTimeout(res, 1000));
    rec = await api('v1/commands/' + encodeURIComponent(rec.id), {signal});
  }
}

// write sends a change: on an agent its answer; in the cloud console the
// command's result once the cluster applied it (see viaCloud).
export async function write(path, {method, body, signal, onWait} = {}) {
  const r = await api(path, {method, body, signal});
  if (config.mode === 'cloud' && r && r.kind && r.id && r.state) return viaCloud(r, signal, onWait);
  return r;
}

// waitingNote says a cloud command is on its way (for write's onWait).
export function waitingNote(rec) {
  return h('p', {class: 'muted cloud-waiting'}, 'Sent to the cluster as command ', h('code', {}, rec.id),
    '; waiting for the cluster to apply it (it runs when the cluster is connected)…');
}

export function errorBox(err) {
  return h('p', {class: 'error', role: 'alert'}, String(err && err.message || err));
}

// --- page registry ---

const pages = [];

// registerPage adds a page. A page is
//   {route: 'nodes/:name', title: 'Node', nav: 20 (order; omit: not in the
//    navigation), mount(el, ctx) -> optional cleanup function}
// ctx: {params, store, subscribe(fn), signal, navigate(hash)}. subscribe's fn
// runs now and after every refresh of the live data, until the page is left.
// page.modes (e.g. ['agent']) limits a page to some servers: the cloud
// console's mirror cannot answer everything an agent can.
export function registerPage(page) {
  const parts = page.route.split('/').filter(Boolean);
  pages.push(Object.assign({}, page, {parts}));
}

function inMode(p) {
  return !p.modes || p.modes.includes(config.mode);
}

export function navPages() {
  return pages.filter((p) => p.nav !== undefined && inMode(p)).sort((a, b) => a.nav - b.nav);
}

export function matchRoute(hash) {
  const parts = hash.replace(/^#\/?/, '').split('/').filter(Boolean).map(decodeURIComponent);
  for (const p of pages) {
    if (p.parts.length !== parts.length || !inMode(p)) continue;
    const params = {};
    let ok = true;
    p.parts.forEach((seg, i) => {
      if (seg.startsWith(':')) params[seg.slice(1)] = parts[i];
      else if (seg !== parts[i]) ok = false;
    });
    if (ok) return {page: p, params};
  }
  return null;
}

// kv is a definition list of [label, value] pairs (falsy pairs skipped).
export function kv(pairs) {
  return h('dl', {class: 'kv'}, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// statusBadge shows a workload or link state with the health colours.
export function statusBadge(status, cls) {
  return h('span', {class: 'badge ' + (cls || status), 'data-status': status}, status.replace(/_/g, ' '));
}

export function link(route, ...children) {
  return h('a', {href: '#/' + route}, ...children);
}
