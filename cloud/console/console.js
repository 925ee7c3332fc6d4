// The cloud console's cluster list: each cluster opens the agent's own UI
// (served under clusters/ID/ from the mirror). Same session as the app.
'use strict';
let csrf = '';

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(path, opts = {}) {
  const headers = {Accept: 'application/json'};
  if (opts.method && opts.method !== 'GET') headers['X-CSRF-Token'] = csrf;
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  const resp = await fetch(path, {method: opts.method || 'GET', headers, credentials: 'same-origin', cache: 'no-store',
    body: opts.body === undefined ? undefined : JSON.stringify(opts.body)});
  if (resp.status === 401) {
    location.replace('login');
    throw new ApiError(401, 'not signed in');
  }
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!resp.ok) throw new ApiError(resp.status, (data && data.error) || resp.status + ' ' + resp.statusText);
  return data;
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function fmtAge(s) {
  if (s === undefined || s === null || s < 0) return 'never';
  if (s < 5) return 'now';
  if (s < 60) return Math.round(s) + ' s ago';
  if (s < 3600) return Math.round(s / 60) + ' min ago';
  if (s < 86400) return (s / 3600).toFixed(1) + ' h ago';
  return (s / 86400).toFixed(1) + ' d ago';
}

function linkState(c) {
  if (c.revoked) return h('span', {class: 'badge offline'}, 'revoked');
  if (!c.registered) return h('span', {class: 'badge unknown'}, 'token issued');
  return c.connected ? h('span', {class: 'badge healthy'}, 'connected') : h('span', {class: 'badge degraded'}, 'disconnected');
}

async function refresh() {
  const tbody = document.getElementById('clusters');
  const banner = document.getElementById('banner');
  try {
    const cs = await api('api/clusters');
    banner.hidden = true;
    document.getElementById('summary').textContent = cs.length + ' cluster' + (cs.length === 1 ? '' : 's') + ' · ' +
      cs.filter((c) => c.connected).length + ' connected';
    tbody.replaceChildren(...(cs.length ? cs.map((c) => h('tr', {class: 'cluster-row ' + (c.connected ? 'healthy' : 'offline'), 'data-cluster': c.id},
      h('td', {}, c.registered ? h('a', {href: 'clusters/' + encodeURIComponent(c.id) + '/'}, h('strong', {}, c.name)) : h('strong', {}, c.name)),
      h('td', {}, linkState(c)),
      h('td', {class: 'hide-sm'}, c.leader || h('span', {class: 'muted'}, '–')),
      h('td', {class: 'num'}, c.connected ? 'now' : fmtAge(c.last_seen_seconds)),
      h('td', {class: 'num'}, String(c.nodes)),
      h('td', {class: 'mono hide-sm muted'}, c.id))) :
      [h('tr', {}, h('td', {colspan: 6, class: 'muted'}, 'No clusters yet: create a registration token below.'))]));
  } catch (e) {
    if (e.status === 401) return;
    banner.textContent = 'Live data is stale: ' + e.message + '. Retrying…';
    banner.hidden = false;
  }
}

async function createToken(ev) {
  ev.preventDefault();
  const out = document.getElementById('reg-result');
  const btn = document.getElementById('reg-create');
  btn.disabled = true;
  try {
    const t = await api('api/tokens', {method: 'POST', body: {cluster: document.getElementById('reg-name').value.trim(), ttl: document.getElementById('reg-ttl').value}});
    const copy = h('button', {class: 'btn small', type: 'button'}, 'Copy');
    copy.addEventListener('click', async () => {
      try { await navigator.clipboard.writeText(t.connect_command); copy.textContent = 'Copied'; } catch (e) { copy.textContent = 'Select and copy'; }
    });
    out.replaceChildren(h('p', {}, 'Token for ', h('strong', {}, t.cluster), ', one use, expires ', new Date(t.expires_at).toLocaleString(), '. On any node run:'),
      h('div', {class: 'command-box'}, h('pre', {class: 'command', id: 'connect-command'}, t.connect_command), copy),
      h('p', {class: 'muted small'}, 'Or open Cloud in the cluster\'s UI and paste the URL and the token: ', h('code', {}, t.token)));
    refresh();
  } catch (e) {
    out.replaceChildren(h('p', {class: 'error', role: 'alert'}, e.message));
  } finally {
    btn.disabled = false;
  }
}

async function start() {
  let sess;
  try {
    sess = await api('ui/session');
  } catch (e) {
    return;
  }
  csrf = sess.csrf_token;
  document.getElementById('who').textContent = sess.user;
  document.getElementById('signout').addEventListener('click', async () => {
    try { await api('ui/logout', {method: 'POST'}); } catch (e) { /* cookie is cleared either way */ }
    location.replace('login');
  });
  document.getElementById('reg-form').addEventListener('submit', createToken);
  refresh();
  setInterval(refresh, 3000);
}

start();
