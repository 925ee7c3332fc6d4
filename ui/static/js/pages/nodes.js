import {registerPage, h, api, link, badge, meter, pct, fmtBytes, fmtAge, fmtAgo, fmtRTT, fmtSince, fmtTime, errorBox, confirmAction, statusBadge, config} from '../core.js';
import {eventLine} from './events.js';

// Managed Kubernetes (GET v1/kube/status). The answer asks every node for
// its components, so the pages share one, refreshed at most every
// KUBE_EVERY_MS instead of on every live refresh. The cloud console's
// mirror has no node to ask: there the pages leave Kubernetes out.
const KUBE_EVERY_MS = 5000;
const kube = {data: null, error: null, at: 0, pending: null};
const kubeShown = config.mode !== 'cloud';

// refreshKube fetches the status if it is stale and then calls after();
// nothing when the cached one is fresh.
function refreshKube(ctx, after) {
  if (!kubeShown) return;
  if (!kube.pending) {
    if (kube.at && Date.now() - kube.at < KUBE_EVERY_MS) return;
    kube.pending = api('v1/kube/status').then((d) => { kube.data = d; kube.error = null; },
      (e) => { kube.error = e; }).finally(() => { kube.at = Date.now(); kube.pending = null; });
  }
  kube.pending.then(() => { if (!ctx.signal.aborted) after(); });
}

function kubeNode(name) {
  return kube.data && kube.data.managed ? kube.data.nodes.find((x) => x.name === name) : undefined;
}

function kubeReady(ns) {
  return ns && ns.ready ? h('span', {class: 'badge healthy'}, 'Ready') : h('span', {class: 'badge offline'}, 'NotReady');
}

// kubeCell is a node's Kubernetes column: Ready, NotReady, or – where the
// agents do not run Kubernetes.
function kubeCell(n) {
  const k = kube.data;
  if (!k) {
    return h('td', {class: 'kube muted', dataset: {kube: kube.error ? 'unknown' : 'loading'}, title: kube.error ? kube.error.message : undefined}, kube.error ? '?' : '…');
  }
  if (!k.managed) return h('td', {class: 'kube muted hide-sm', dataset: {kube: 'none'}, title: 'Kubernetes is not managed by the agents'}, '–');
  const ns = kubeNode(n.name);
  return h('td', {class: 'kube', dataset: {kube: ns && ns.ready ? 'ready' : 'notready'}, title: (ns && ns.error) || k.api_error || undefined}, kubeReady(ns));
}

function role(n) {
  return h('span', {class: 'role ' + n.raft_role}, n.raft_role);
}

function usage(n) {
  if (n.last_heartbeat_seconds < 0) return {cpu: '–', mem: '–', disk: '–'};
  return {
    cpu: meter(n.cpu_percent, n.cpu_percent.toFixed(0) + '%'),
    mem: meter(pct(n.mem_used_bytes, n.mem_total_bytes), fmtBytes(n.mem_used_bytes) + ' / ' + fmtBytes(n.mem_total_bytes)),
    disk: meter(pct(n.disk_used_bytes, n.disk_total_bytes), fmtBytes(n.disk_used_bytes) + ' / ' + fmtBytes(n.disk_total_bytes)),
  };
}

registerPage({
  route: 'nodes',
  title: 'Nodes',
  nav: 10,
  mount(el, ctx) {
    const tbody = h('tbody');
    const summary = h('span', {class: 'muted'});
    const kubeHead = kubeShown ? h('th', {class: 'kube'}, 'Kubernetes') : null;
    el.append(
      h('div', {class: 'page-head'}, h('h1', {}, 'Nodes'), summary),
      h('div', {class: 'table-wrap'}, h('table', {class: 'grid nodes-table'},
        h('thead', {}, h('tr', {},
          h('th', {}, 'Node'), h('th', {}, 'Health'), h('th', {class: 'num'}, 'Heartbeat'),
          h('th', {}, 'CPU'), h('th', {class: 'hide-sm'}, 'Memory'), h('th', {class: 'hide-sm'}, 'Disk'),
          h('th', {}, 'Role'), kubeHead, h('th', {class: 'hide-sm'}, 'Mesh IP'), h('th', {class: 'hide-sm'}, 'Version'))),
        tbody)));
    let last = null;
    ctx.subscribe((st) => {
      last = st;
      render(st);
      refreshKube(ctx, () => render(last));
    });
    function render(st) {
      if (!st.nodes) {
        if (st.error) tbody.replaceChildren(h('tr', {}, h('td', {colspan: kubeShown ? 10 : 9}, errorBox(st.error))));
        return;
      }
      // Not managed: the column only says so, and a phone has no room for that.
      if (kubeHead) kubeHead.classList.toggle('hide-sm', !!kube.data && !kube.data.managed);
      const me = st.status && st.status.name;
      summary.textContent = st.nodes.nodes.length + ' nodes · state index ' + st.nodes.index;
      tbody.replaceChildren(...st.nodes.nodes.map((n) => {
        const u = usage(n);
        return h('tr', {class: 'node-row ' + n.health, dataset: {node: n.name}},
          h('td', {}, link('nodes/' + encodeURIComponent(n.name), h('strong', {}, n.name)),
            n.name === me ? h('span', {class: 'tag'}, 'this node') : null,
            n.relay ? h('span', {class: 'tag', title: 'relays for members that cannot reach each other'}, 'relay') : null),
          h('td', {}, badge(n.health), h('div', {class: 'reason muted small'}, n.health_reason)),
          h('td', {class: 'num'}, fmtAge(n.last_heartbeat_seconds)),
          h('td', {}, u.cpu), h('td', {class: 'hide-sm'}, u.mem), h('td', {class: 'hide-sm'}, u.disk),
          h('td', {}, role(n)),
          kubeShown ? kubeCell(n) : null,
          h('td', {class: 'mono hide-sm'}, n.mesh_ip),
          h('td', {class: 'mono hide-sm'}, n.version || '–'));
      }));
    }
  },
});

function kv(pairs) {
  return h('dl', {class: 'kv'}, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

// showKube fills the node page's Kubernetes card: the node's readiness and
// its components as the node reports them.
function showKube(card, name) {
  const title = h('h2', {}, 'Kubernetes');
  const k = kube.data;
  if (!k) {
    card.replaceChildren(title, kube.error ? errorBox(kube.error) : h('p', {class: 'muted'}, 'Loading…'));
    return;
  }
  if (!k.managed) {
    card.replaceChildren(title, h('p', {class: 'muted', id: 'kube-not-managed'}, 'Kubernetes is not managed by the agents. ',
      h('code', {}, 'runos-agent kube enable'), ' runs it on every node.'));
    return;
  }
  const ns = kubeNode(name);
  title.append(' ', kubeReady(ns), k.version ? h('span', {class: 'small muted sub'}, k.version) : null);
  const comps = (ns && ns.components) || [];
  card.replaceChildren(...[title,
    k.api_error ? h('p', {class: 'muted small', id: 'kube-api-error'}, 'Node readiness unknown: ', k.api_error) : null,
    ns && ns.error ? h('p', {class: 'error', id: 'kube-node-error'}, ns.error) : null,
    !ns ? h('p', {class: 'muted'}, 'This node is not in the Kubernetes status yet.') : null,
    comps.length ? h('div', {class: 'table-wrap'}, h('table', {class: 'grid kube-components'},
      h('thead', {}, h('tr', {}, h('th', {}, 'Component'), h('th', {}, 'State'), h('th', {class: 'hide-sm'}, 'Version'),
        h('th', {class: 'num'}, 'Restarts'), h('th', {class: 'num hide-sm'}, 'Up'), h('th', {}, 'Last error'))),
      h('tbody', {}, comps.map((c) => h('tr', {class: c.running ? 'kube-comp' : 'kube-comp bad-row', dataset: {component: c.name}},
        h('td', {class: 'mono'}, c.name, c.pid ? h('div', {class: 'muted small'}, 'pid ' + c.pid) : null),
        h('td', {}, statusBadge(c.running ? 'running' : 'down', c.running ? 'healthy' : 'offline')),
        h('td', {class: 'mono hide-sm'}, c.version || '–'),
        h('td', {class: 'num'}, String(c.restarts)),
        h('td', {class: 'num hide-sm'}, c.running && c.since ? fmtSince(c.since).replace(/ ago$/, '') : '–'),
        h('td', {class: 'last-error small'}, c.last_error || h('span', {class: 'muted'}, '–'))))))) :
      ns ? h('p', {class: 'muted'}, 'No components run on this node.') : null].filter(Boolean));
}

function pathCell(p) {
  if (!p) return h('span', {class: 'muted'}, 'unknown');
  const cls = p.path === 'direct' ? 'direct' : p.path === 'relay' ? 'relay' : 'none';
  return h('span', {class: 'path ' + cls}, p.path + (p.via ? ' via ' + p.via : ''));
}

registerPage({
  route: 'nodes/:name',
  title: 'Node',
  mount(el, ctx) {
    const name = ctx.params.name;
    const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
    // Built once, outside the live-refreshed body, so a pending
    // confirmation survives refreshes.
    const actions = h('div', {class: 'head-actions'});
    // Filled as the shared Kubernetes status arrives, kept across refreshes.
    const kubeCard = kubeShown ? h('div', {class: 'card wide', id: 'kube-node'}, h('h2', {}, 'Kubernetes'), h('p', {class: 'muted'}, 'Loading…')) : null;
    el.append(h('p', {class: 'crumbs'}, link('nodes', 'Nodes'), ' / '), h('div', {class: 'page-head'}, h('h1', {}, name), actions), body);
    let actionsFor = '';
    ctx.subscribe((st) => {
      if (kubeShown) {
        showKube(kubeCard, name);
        refreshKube(ctx, () => showKube(kubeCard, name));
      }
      if (!st.nodes) {
        if (st.error) body.replaceChildren(errorBox(st.error));
        return;
      }
      const n = st.nodes.nodes.find((x) => x.name === name);
      if (!n) {
        body.replaceChildren(h('p', {}, 'No node named ', h('code', {}, name), ' in the cluster. ', link('nodes', 'All nodes'), '.'));
        return;
      }
      const local = !!st.status && st.status.name === name;
      if (!local && actionsFor !== name) {
        actionsFor = name;
        actions.replaceChildren(confirmAction('Remove from cluster',
          'Remove ' + name + '? Every member drops its WireGuard peer and refuses its certificate; it can only come back with a new join token.',
          async () => {
            await api('v1/nodes/' + encodeURIComponent(name), {method: 'DELETE', signal: ctx.signal});
            ctx.refresh();
            ctx.navigate('#/nodes');
          }));
      }
      const u = usage(n);
      const info = h('div', {class: 'card'}, h('h2', {}, 'Node'), kv([
        ['Health', h('span', {}, badge(n.health), ' ', h('span', {class: 'muted'}, n.health_reason))],
        ['Last heartbeat', fmtAgo(n.last_heartbeat_seconds)],
        ['Raft role', role(n)],
        ['Mesh IP', h('span', {class: 'mono'}, n.mesh_ip)],
        ['Pod network', h('span', {class: 'mono'}, n.pod_cidr)],
        ['Endpoints', h('span', {class: 'mono'}, (n.endpoints || []).join(', ') || '–')],
        ['Relay', n.relay ? 'offers relaying' : 'no'],
        ['Version', n.version || '–'],
        ['Joined', fmtTime(n.joined_at)],
        ['ID', h('span', {class: 'mono'}, n.id)],
      ]));
      const res = h('div', {class: 'card'}, h('h2', {}, 'Resources',
        n.last_heartbeat_seconds >= 0 ? h('span', {class: 'small muted sub'}, 'from the heartbeat ' + fmtAgo(n.last_heartbeat_seconds)) : null),
      n.last_heartbeat_seconds < 0 ? h('p', {class: 'muted'}, 'No heartbeat received yet.') : kv([
        ['CPU', u.cpu],
        ['Load', n.load1.toFixed(2) + ' · ' + n.load5.toFixed(2) + ' · ' + n.load15.toFixed(2)],
        ['Memory', u.mem],
        ['Disk', u.disk],
        ['Uptime', fmtAge(n.uptime_seconds)],
        ['Mesh traffic', '↓ ' + fmtBytes(n.mesh_rx_bytes) + ' · ↑ ' + fmtBytes(n.mesh_tx_bytes)],
      ]));

      let peers;
      if (local) {
        peers = h('div', {class: 'card wide'}, h('h2', {}, 'Peers and paths'),
          h('p', {class: 'muted small'}, 'Measured by this node: the WireGuard path to each peer and its last probe round trip.'),
          h('div', {class: 'table-wrap'}, h('table', {class: 'grid peers-table'},
            h('thead', {}, h('tr', {}, h('th', {}, 'Peer'), h('th', {}, 'Path'), h('th', {class: 'num'}, 'RTT'),
              h('th', {class: 'hide-sm'}, 'Endpoint'), h('th', {class: 'num'}, 'Handshake'), h('th', {class: 'num hide-sm'}, 'Rx / Tx'))),
            h('tbody', {}, st.status.peers.length ? st.status.peers.map((p) => h('tr', {dataset: {peer: p.name}},
              h('td', {}, p.name ? link('nodes/' + encodeURIComponent(p.name), p.name) : h('span', {class: 'muted'}, 'not in the cluster'),
                h('div', {class: 'muted small mono'}, p.mesh_ip)),
              h('td', {}, pathCell(p)),
              h('td', {class: 'num'}, fmtRTT(p.rtt_ms)),
              h('td', {class: 'mono hide-sm'}, p.endpoint || '–'),
              h('td', {class: 'num'}, fmtAgo(p.last_handshake_seconds)),
              h('td', {class: 'num hide-sm'}, fmtBytes(p.rx_bytes) + ' / ' + fmtBytes(p.tx_bytes)))) :
              h('tr', {}, h('td', {colspan: 6, class: 'muted'}, 'No peers: this is the only node.'))))));
      } else if (!st.status) {
        peers = h('div', {class: 'card wide'}, h('h2', {}, 'Paths'),
          h('p', {class: 'muted'}, 'Paths are measured by each node: open the UI on ' + name + ' to see its peers.'));
      } else {
        const p = st.status.peers.find((x) => x.name === name);
        peers = h('div', {class: 'card wide'}, h('h2', {}, 'Path from ' + st.status.name,
          n.health !== 'healthy' ? h('span', {class: 'small muted sub'}, 'last known: ' + name + ' is ' + n.health) : null),
          p ? kv([
            ['Path', pathCell(p)],
            ['RTT', fmtRTT(p.rtt_ms)],
            ['Endpoint', h('span', {class: 'mono'}, p.endpoint || '–')],
            ['Handshake', fmtAgo(p.last_handshake_seconds)],
            ['Traffic', '↓ ' + fmtBytes(p.rx_bytes) + ' · ↑ ' + fmtBytes(p.tx_bytes)],
          ]) : h('p', {class: 'muted'}, 'This node has no WireGuard peer for ' + name + ' yet.'),
          h('p', {class: 'muted small'}, 'Paths between other pairs are measured by those nodes: open the UI on ' + name + ' to see its peers.'));
      }
      const evs = st.events.filter((e) => e.node === name).slice(-10).reverse();
      const history = h('div', {class: 'card wide'}, h('h2', {}, 'History'),
        evs.length ? h('ul', {class: 'events compact'}, evs.map((e) => h('li', {}, eventLine(e)))) : h('p', {class: 'muted'}, 'No events about this node.'));
      body.replaceChildren(...[h('div', {class: 'columns'}, info, res), kubeCard, peers, history].filter(Boolean));
    });
  },
});
