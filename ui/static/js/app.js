// The RunOS UI shell: session bootstrap, navigation, hash routing and the
// live data every page shares (nodes, status, events), refreshed without
// page reloads.
import {api, config, setCSRF, toLogin, h, navPages, matchRoute, ApiError} from './core.js';
import './pages/index.js';

const REFRESH_MS = 2000;

// store is the live cluster data. Pages read it in subscribe callbacks.
const store = {
  nodes: null,        // GET v1/nodes
  status: null,       // GET v1/status (null where the server has none)
  cloud: null,        // GET v1/cloud: the cloud link (null if unavailable)
  events: [],         // GET v1/events, oldest first
  eventsLoaded: false,
  error: null,        // last refresh error (shown as a banner)
  updatedAt: 0,
};
const subscribers = new Set();

function notify() {
  for (const fn of subscribers) {
    try { fn(store); } catch (e) { console.error(e); }
  }
}

let refreshTimer = 0;
let refreshing = false;
async function refresh() {
  clearTimeout(refreshTimer);
  if (refreshing) return;
  refreshing = true;
  try {
    // v1/status is one node's own view; a server without one (the cloud
    // console's mirror) answers 404 and the pages do without it.
    // The cloud console answers from its mirror: no node of its own.
    const [nodes, status, cloud] = await Promise.all([api('v1/nodes'),
      config.mode === 'cloud' ? null : api('v1/status').catch((e) => { if (e.status === 404 || e.status === 501) return null; throw e; }),
      api('v1/cloud').catch((e) => { if (e.status === 401) throw e; return null; })]);
    store.nodes = nodes;
    store.status = status;
    store.cloud = cloud;
    store.error = null;
    store.updatedAt = Date.now();
  } catch (e) {
    if (e.status === 401) return;
    store.error = e;
  } finally {
    refreshing = false;
  }
  showBanner();
  notify();
  refreshTimer = setTimeout(refresh, document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
}

// Events: one long poll at a time (the agent holds it until an event
// arrives or 30 s pass); each batch also refreshes the node data at once.
async function eventLoop() {
  let after = 0;
  for (;;) {
    try {
      const wait = store.eventsLoaded ? '&wait=30s' : '';
      const asked = Date.now();
      const r = await api('v1/events?after=' + after + wait);
      // A server that does not hold the poll must not be hammered.
      if (wait && !r.events.length && Date.now() - asked < 1000) await new Promise((res) => setTimeout(res, 2000));
      after = r.last;
      if (r.events.length) {
        store.events = store.events.concat(r.events).slice(-1000);
        if (store.eventsLoaded) refresh();
      }
      store.eventsLoaded = true;
      notify();
    } catch (e) {
      if (e.status === 401) return;
      await new Promise((res) => setTimeout(res, 3000));
    }
  }
}

function showBanner() {
  const b = document.getElementById('banner');
  if (store.error) {
    b.textContent = 'Live data is stale: ' + store.error.message + '. Retrying…';
    b.hidden = false;
  } else {
    b.hidden = true;
  }
}

// --- routing ---

let current = null; // {cleanup, abort}

function renderNav() {
  const nav = document.getElementById('nav');
  const here = location.hash.replace(/^#\/?/, '').split('/')[0];
  nav.replaceChildren(...navPages().map((p) => {
    const first = p.parts[0] || '';
    const active = first === here;
    return h('a', {href: '#/' + p.route, class: active ? 'active' : undefined, 'aria-current': active ? 'page' : undefined}, p.title);
  }));
}

function route() {
  if (current) {
    current.abort.abort();
    for (const fn of current.subs) subscribers.delete(fn);
    if (typeof current.cleanup === 'function') current.cleanup();
    current = null;
  }
  renderNav();
  const main = document.getElementById('main');
  const m = matchRoute(location.hash);
  if (!m) {
    main.replaceChildren(h('section', {class: 'page'}, h('h1', {}, 'Not found'),
      h('p', {}, 'No page at ', h('code', {}, location.hash), '. ', h('a', {href: '#/'}, 'Go to the overview'), '.')));
    document.title = 'Not found · RunOS';
    return;
  }
  const abort = new AbortController();
  const subs = [];
  const ctx = {
    params: m.params,
    store,
    signal: abort.signal,
    navigate: (hash) => { location.hash = hash; },
    subscribe(fn) {
      subs.push(fn);
      subscribers.add(fn);
      if (store.updatedAt || store.error) fn(store);
    },
    refresh,
  };
  const el = h('section', {class: 'page', 'data-page': m.page.parts[0] || 'overview'});
  main.replaceChildren(el);
  document.title = m.page.title + ' · RunOS';
  current = {abort, subs, cleanup: m.page.mount(el, ctx)};
}

async function start() {
  let session;
  try {
    session = await api('ui/session');
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    document.getElementById('main').replaceChildren(h('p', {class: 'error'}, 'Cannot load the session: ' + e.message));
    return;
  }
  setCSRF(session.csrf_token);
  document.getElementById('who').textContent = session.user + (config.node ? ' @ ' + config.node : '');
  if (config.mode === 'cloud') cloudBrand();
  document.getElementById('signout').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  document.addEventListener('visibilitychange', () => { if (!document.hidden) refresh(); });
  route();
  refresh();
  eventLoop();
}

// In the cloud console the brand names the cluster and leads back to the
// list of clusters (the console's root, two levels above clusters/ID/).
async function cloudBrand() {
  const brand = document.querySelector('.brand');
  brand.setAttribute('href', '../../');
  brand.querySelector('span').textContent = 'RunOS cloud';
  try {
    const st = await api('v1/status');
    brand.append(h('span', {class: 'cluster'}, st.name));
  } catch (e) { /* the brand still leads back */ }
}

async function signOut() {
  try {
    await api('ui/logout', {method: 'POST'});
  } catch (e) {
    // The cookie is cleared either way; the message says what the cluster missed.
    if (e.status !== 401) alert(e.message);
  }
  location.hash = '';
  toLogin();
}

start();
