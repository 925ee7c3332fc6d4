// Services (issue 6): the catalog with its tiers and a deploy form, the
// instances with live status, an instance's connection details (the
// password only on request) and delete; the Kubernetes target.
//
// In the cloud console (config.mode 'cloud') the same pages read the
// cloud's mirror and deploys and deletes go as cloud commands (write waits
// for their result). The Kubernetes target and connection details are not
// there: the kubeconfig and credentials stay in the cluster.
import {registerPage, h, api, link, kv, statusBadge, fmtSince, fmtTime, errorBox, confirmAction, copyButton, config, write, waitingNote} from '../core.js';

// Workload status → badge colour.
const STATUS_CLASS = {ready: 'healthy', applying: 'degraded', pending: 'degraded', deleting: 'unknown', failed: 'offline'};

export function workloadStatus(w) {
  return statusBadge(w.status, STATUS_CLASS[w.status] || 'unknown');
}

export function replicas(w) {
  return h('span', {class: 'replicas' + (w.total && w.ready === w.total ? ' ok-text' : '')}, w.ready + ' / ' + w.total);
}

// poller runs fn now and on every live refresh, one call at a time.
export function poller(ctx, fn) {
  let busy = false;
  const run = async () => {
    if (busy) return;
    busy = true;
    try { await fn(); } catch (e) { /* fn shows its own errors */ } finally { busy = false; }
  };
  ctx.subscribe(run);
  run();
}

let catalogCache = null;
export async function catalog(signal) {
  if (!catalogCache) catalogCache = await api('v1/catalog', {signal});
  return catalogCache;
}

// CREDS_STAY explains, in the cloud console, where secrets are.
export const CREDS_STAY = 'Credentials stay in the cluster: the cloud never receives them. Open the UI of one of the cluster\'s nodes, or run `runos-agent services show --reveal OSID` on one, to see them.';

function cloudKubeCard() {
  return h('div', {class: 'card wide', id: 'kube-card'}, h('h2', {}, 'Kubernetes target'),
    h('p', {class: 'muted', id: 'kube-cloud-note'}, 'The Kubernetes target is set on the cluster itself (', h('code', {}, 'runos-agent kube set'),
      ' or a node\'s UI): its kubeconfig is a credential and stays in the cluster. Deploys wait as ', h('em', {}, 'pending'), ' until it is set.'));
}

function kubeCard(ctx) {
  if (config.mode === 'cloud') return cloudKubeCard();
  const card = h('div', {class: 'card wide', id: 'kube-card'}, h('h2', {}, 'Kubernetes target'), h('p', {class: 'muted'}, 'Loading…'));
  const text = h('textarea', {id: 'kube-config', name: 'kubeconfig', rows: 6, spellcheck: 'false', placeholder: 'apiVersion: v1\nkind: Config\n…', required: true});
  const file = h('input', {type: 'file', accept: '.yaml,.yml,.conf,text/*', 'aria-label': 'Read a kubeconfig file'});
  file.addEventListener('change', async () => { if (file.files[0]) text.value = await file.files[0].text(); });
  const submit = h('button', {class: 'btn primary', type: 'submit', id: 'kube-save'}, 'Save kubeconfig');
  const out = h('div');
  const form = h('form', {class: 'stack-form', id: 'kube-form'}, h('label', {}, 'Kubeconfig (stored encrypted in the cluster state; any leader applies with it)', text), h('div', {class: 'form-row'}, file, submit), out);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    try {
      const k = await api('v1/kube', {method: 'PUT', body: {kubeconfig: text.value}, signal: ctx.signal});
      text.value = '';
      out.replaceChildren();
      details.open = false;
      editing = false;
      show(k, true);
    } catch (e) {
      if (e.name !== 'AbortError') out.replaceChildren(errorBox(e));
    } finally {
      submit.disabled = false;
    }
  });
  const details = h('details', {}, h('summary', {}, 'Replace the kubeconfig'), form);
  let editing = false;
  let shownKey = '';
  const show = (k, first) => {
    // Redraw only on a change: the form must keep focus while typing.
    const key = JSON.stringify(k);
    if (key === shownKey && !first) return;
    if (!k.configured) {
      shownKey = key;
      card.replaceChildren(h('h2', {}, 'Kubernetes target'),
        h('p', {}, statusBadge('not set', 'degraded'), ' Deploys are accepted and wait as ', h('em', {}, 'pending'), ' until a kubeconfig is set.'), form);
      return;
    }
    if (first || !editing) {
      shownKey = key;
      card.replaceChildren(h('h2', {}, 'Kubernetes target'), kv([
        ['API server', h('span', {class: 'mono', id: 'kube-server'}, k.server)],
        ['Reachable', k.error ? h('span', {class: 'bad-text'}, k.error) : h('span', {class: 'ok-text'}, 'no errors from the leader')],
        ['Set', k.set_at ? fmtTime(k.set_at) : '–'],
      ]), details);
    }
  };
  details.addEventListener('toggle', () => { editing = details.open; });
  poller(ctx, async () => {
    try {
      show(await api('v1/kube', {signal: ctx.signal}), false);
    } catch (e) {
      if (e.name !== 'AbortError') card.replaceChildren(h('h2', {}, 'Kubernetes target'), errorBox(e));
    }
  });
  return card;
}

// tierList shows each tier with its replicas, whether it is fault tolerant
// and the catalog's note (clamped; whole in the tooltip and the deploy form).
function tierList(svc) {
  return h('ul', {class: 'tiers'}, svc.tiers.map((t) => h('li', {class: 'tier', dataset: {tier: t.name}, title: t.note || undefined},
    h('strong', {}, t.name), ' ', h('span', {class: 'muted'}, t.replicas + ' replica' + (t.replicas === 1 ? '' : 's')), ' ',
    t.ha ? h('span', {class: 'tag ha'}, 'HA') : (t.name !== 'lightweight' ? h('span', {class: 'tag no-ha'}, 'not HA') : null),
    t.note && t.name !== 'lightweight' ? h('div', {class: 'muted small note'}, t.note) : null)));
}

registerPage({
  route: 'services',
  title: 'Services',
  nav: 33,
  mount(el, ctx) {
    const tbody = h('tbody', {}, h('tr', {}, h('td', {colspan: 6, class: 'muted'}, 'Loading…')));
    const count = h('span', {class: 'muted'});
    const grid = h('div', {class: 'catalog', id: 'catalog'}, h('p', {class: 'muted'}, 'Loading the catalog…'));
    const filter = h('input', {type: 'search', placeholder: 'Filter the catalog', 'aria-label': 'Filter the catalog'});
    el.append(
      h('div', {class: 'page-head'}, h('h1', {}, 'Services'), count),
      h('div', {class: 'table-wrap'}, h('table', {class: 'grid services-table'},
        h('thead', {}, h('tr', {}, h('th', {}, 'Instance'), h('th', {}, 'Service'), h('th', {class: 'hide-sm'}, 'Tier'), h('th', {}, 'Status'),
          h('th', {class: 'num'}, 'Ready'), h('th', {class: 'hide-sm'}, 'Created'))),
        tbody)),
      h('div', {class: 'kube-wrap'}, kubeCard(ctx)),
      h('div', {class: 'page-head catalog-head'}, h('h2', {}, 'Catalog'), filter),
      grid);
    poller(ctx, async () => {
      try {
        const list = await api('v1/services', {signal: ctx.signal});
        count.textContent = list.length + ' instance' + (list.length === 1 ? '' : 's');
        tbody.replaceChildren(...(list.length ? list.map((s) => h('tr', {class: 'service-row ' + s.status, dataset: {osid: s.osid}},
          h('td', {}, link('services/' + encodeURIComponent(s.osid), h('strong', {class: 'mono nowrap'}, s.osid))),
          h('td', {}, s.service),
          h('td', {class: 'hide-sm'}, s.tier),
          h('td', {}, workloadStatus(s), s.reason ? h('div', {class: 'reason muted small'}, s.reason) : null),
          h('td', {class: 'num'}, replicas(s)),
          h('td', {class: 'hide-sm muted', title: fmtTime(s.created_at)}, fmtSince(s.created_at)))) :
          [h('tr', {}, h('td', {colspan: 6, class: 'muted'}, 'No instances yet: deploy one from the catalog below.'))]));
      } catch (e) {
        if (e.name !== 'AbortError') tbody.replaceChildren(h('tr', {}, h('td', {colspan: 6}, errorBox(e))));
      }
    });
    const draw = (cat) => {
      const q = filter.value.trim().toLowerCase();
      const items = cat.filter((s) => !q || (s.name + ' ' + s.title + ' ' + s.kind + ' ' + s.description).toLowerCase().includes(q));
      grid.replaceChildren(...items.map((s) => h('div', {class: 'card svc', dataset: {service: s.name}},
        h('div', {class: 'svc-head'}, h('h3', {}, s.title), h('span', {class: 'tag'}, s.kind)),
        h('p', {class: 'small'}, s.description),
        tierList(s),
        h('div', {class: 'svc-foot'}, h('a', {class: 'btn small primary deploy', href: '#/services/deploy/' + encodeURIComponent(s.name)}, 'Deploy'),
          h('span', {class: 'muted small mono', title: 'default version'}, s.version)))));
    };
    catalog(ctx.signal).then((cat) => {
      draw(cat);
      filter.addEventListener('input', () => draw(cat));
    }).catch((e) => { if (e.name !== 'AbortError') grid.replaceChildren(errorBox(e)); });
  },
});

registerPage({
  route: 'services/deploy/:name',
  title: 'Deploy',
  mount(el, ctx) {
    const name = ctx.params.name;
    const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
    const title = h('h1', {}, 'Deploy ' + name);
    el.append(h('p', {class: 'crumbs'}, link('services', 'Services'), ' / '), title, body);
    catalog(ctx.signal).then((cat) => {
      const svc = cat.find((s) => s.name === name);
      if (!svc) {
        body.replaceChildren(h('p', {}, 'No service ', h('code', {}, name), ' in the catalog. ', link('services', 'Back to the catalog'), '.'));
        return;
      }
      title.textContent = 'Deploy ' + svc.title;
      const tiers = h('fieldset', {class: 'tier-choice'}, h('legend', {}, 'Tier'), svc.tiers.map((t, i) => h('label', {class: 'radio'},
        h('input', {type: 'radio', name: 'tier', value: t.name, checked: i === 0}),
        h('span', {}, h('strong', {}, t.name), ' · ', t.replicas + ' replica' + (t.replicas === 1 ? '' : 's'), ' ',
          t.ha ? h('span', {class: 'tag ha'}, 'HA') : (t.name !== 'lightweight' ? h('span', {class: 'tag no-ha'}, 'not HA') : null),
          t.note ? h('span', {class: 'muted small note'}, ' ', t.note) : null))));
      const inputs = svc.settings.map((st) => {
        const inp = h('input', {name: 'set-' + st.key, placeholder: st.default || '(default)', dataset: {key: st.key}, autocomplete: 'off'});
        return h('label', {}, h('span', {}, h('code', {}, st.key), ' ', h('span', {class: 'muted small'}, st.description)), inp);
      });
      const extra = h('textarea', {name: 'extra', rows: 2, placeholder: 'key=value, one per line', spellcheck: 'false'});
      const submit = h('button', {class: 'btn primary', type: 'submit', id: 'deploy-submit'}, 'Deploy');
      const out = h('div', {id: 'deploy-result'});
      const form = h('form', {class: 'stack-form', id: 'deploy-form'}, tiers,
        h('h2', {}, 'Settings ', h('span', {class: 'small muted'}, 'empty fields keep the tier\'s defaults')),
        h('div', {class: 'settings'}, inputs),
        h('label', {}, 'Other overrides (--set)', extra),
        h('div', {class: 'form-row'}, submit), out);
      form.addEventListener('submit', async (ev) => {
        ev.preventDefault();
        const set = {};
        for (const inp of form.querySelectorAll('input[data-key]')) if (inp.value.trim()) set[inp.dataset.key] = inp.value.trim();
        for (const line of extra.value.split('\n')) {
          const l = line.trim();
          if (!l) continue;
          const i = l.indexOf('=');
          if (i <= 0) {
            out.replaceChildren(errorBox('Override "' + l + '" is not key=value.'));
            return;
          }
          set[l.slice(0, i).trim()] = l.slice(i + 1).trim();
        }
        submit.disabled = true;
        out.replaceChildren(h('p', {class: 'muted'}, 'Deploying…'));
        try {
          const s = await write('v1/services', {method: 'POST', body: {service: name, tier: form.querySelector('input[name=tier]:checked').value, set}, signal: ctx.signal,
            onWait: (rec) => out.replaceChildren(waitingNote(rec))});
          ctx.navigate('#/services/' + encodeURIComponent(s.osid));
        } catch (e) {
          if (e.name !== 'AbortError') out.replaceChildren(errorBox(e));
        } finally {
          submit.disabled = false;
        }
      });
      body.replaceChildren(h('div', {class: 'card wide'}, h('p', {}, svc.description, ' ', h('span', {class: 'muted'}, svc.kind + ' · ' + svc.version)), form));
    }).catch((e) => { if (e.name !== 'AbortError') body.replaceChildren(errorBox(e)); });
  },
});

function connectionCard(c, onReveal) {
  const secret = (v) => c.revealed ? h('span', {class: 'mono secret'}, v || '–') : h('span', {class: 'mono muted'}, '••••••••');
  return h('div', {class: 'card wide', id: 'connection'}, h('h2', {}, 'Connection',
    c.revealed ? h('span', {class: 'small muted sub'}, 'secrets shown') : null),
  kv([
    ['Host', h('span', {class: 'mono'}, c.host)],
    ['Port', String(c.port)],
    c.user ? ['User', h('span', {class: 'mono'}, c.user)] : null,
    ['Password', h('span', {id: 'conn-password'}, secret(c.password), ' ',
      c.revealed ? (c.password ? copyButton(() => c.password) : null) : h('button', {class: 'btn small', type: 'button', id: 'reveal', onclick: onReveal}, 'Reveal'))],
    c.database ? ['Database', h('span', {class: 'mono'}, c.database)] : null,
    c.url ? ['URL', h('span', {class: 'mono', id: 'conn-url'}, c.url, ' ', c.revealed ? copyButton(() => c.url) : null)] : null,
    ['Secret', h('span', {class: 'mono'}, c.secret)],
    c.env && c.env.length ? ['Apps get', h('span', {class: 'mono small'}, c.env.join(' '))] : null,
  ]));
}

registerPage({
  route: 'services/:osid',
  title: 'Service instance',
  mount(el, ctx) {
    const osid = ctx.params.osid;
    const actions = h('div', {class: 'head-actions'}, confirmAction('Delete',
      'Delete ' + osid + '? Its namespace goes with every object and volume in it: the data is gone.',
      async () => {
        await write('v1/services/' + encodeURIComponent(osid), {method: 'DELETE', signal: ctx.signal,
          onWait: (rec) => body.prepend(waitingNote(rec))});
        ctx.navigate('#/services');
      }));
    const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
    el.append(h('p', {class: 'crumbs'}, link('services', 'Services'), ' / '), h('div', {class: 'page-head'}, h('h1', {class: 'mono'}, osid), actions), body);
    let revealed = null; // the connection with secrets, once asked for
    const reveal = async () => {
      try {
        const s = await api('v1/services/' + encodeURIComponent(osid) + '?reveal=1', {signal: ctx.signal});
        revealed = s.connection;
        draw(s);
      } catch (e) {
        if (e.name !== 'AbortError') body.append(errorBox(e));
      }
    };
    const draw = (s) => {
      const info = h('div', {class: 'card'}, h('h2', {}, 'Instance'), kv([
        ['Service', s.service],
        ['Tier', h('span', {}, s.tier, s.tier_note ? h('div', {class: 'muted small'}, s.tier_note) : null)],
        ['Status', h('span', {id: 'svc-status'}, workloadStatus(s), ' ', s.reason ? h('span', {class: 'muted'}, s.reason) : null)],
        ['Ready', replicas(s)],
        s.conditions && s.conditions.length ? ['Conditions', h('ul', {class: 'plain'}, s.conditions.map((c) => h('li', {class: 'small'}, c)))] : null,
        s.set && Object.keys(s.set).length ? ['Settings', h('ul', {class: 'plain settings-list mono small'}, Object.entries(s.set).map(([k, v]) => h('li', {}, h('span', {class: 'muted'}, k + ' '), v)))] : null,
        ['Namespace', h('span', {class: 'mono'}, s.osid)],
        ['Created', fmtTime(s.created_at)],
        ['Updated', fmtSince(s.updated_at)],
        s.used_by && s.used_by.length ? ['Used by', h('span', {}, s.used_by.map((a, i) => [i ? ', ' : '', link('apps/' + encodeURIComponent(a), a)]))] : null,
      ]));
      const conn = config.mode === 'cloud' ?
        h('div', {class: 'card', id: 'connection'}, h('h2', {}, 'Connection'), h('p', {class: 'muted', id: 'creds-stay'}, CREDS_STAY.replace('OSID', s.osid))) :
        s.connection ? connectionCard(revealed || s.connection, reveal) : h('div', {class: 'card'}, h('h2', {}, 'Connection'), h('p', {class: 'muted'}, 'Not available yet.'));
      body.replaceChildren(h('div', {class: 'columns'}, info, conn));
    };
    poller(ctx, async () => {
      try {
        draw(await api('v1/services/' + encodeURIComponent(osid), {signal: ctx.signal}));
      } catch (e) {
        if (e.name === 'AbortError') return;
        if (e.status === 404) body.replaceChildren(h('p', {}, 'No instance ', h('code', {}, osid), ' (deleted?). ', link('services', 'All services'), '.'));
        else body.replaceChildren(errorBox(e));
      }
    });
  },
});
