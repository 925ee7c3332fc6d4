import {registerPage, h, s, link, fmtRTT, errorBox} from '../core.js';

const W = 720;
const H = 440;

// layout puts nodes on a circle, this node first at the top.
function layout(names) {
  const cx = W / 2;
  const cy = H / 2;
  const r = names.length <= 1 ? 0 : Math.min(W, H) / 2 - 70;
  const pos = {};
  names.forEach((n, i) => {
    const a = -Math.PI / 2 + 2 * Math.PI * i / names.length;
    pos[n] = {x: cx + r * Math.cos(a), y: cy + r * Math.sin(a)};
  });
  return pos;
}

function draw(st) {
  const nodes = st.nodes.nodes;
  // Without a serving node's status (the cloud console) no link is
  // measured: every pair is drawn as unknown.
  const me = st.status ? st.status.name : null;
  const names = me ? [me].concat(nodes.map((n) => n.name).filter((n) => n !== me)) : nodes.map((n) => n.name);
  const pos = layout(names);
  const peers = new Map(st.status ? st.status.peers.map((p) => [p.name, p]) : []);
  const first = me ? 1 : 0;
  const byName = new Map(nodes.map((n) => [n.name, n]));
  const links = s('g', {class: 'links'});
  const labels = s('g', {class: 'link-labels'});
  // Pairs this node cannot measure: the WireGuard mesh is full, so they
  // exist, but their path is known only to those two nodes.
  for (let i = first; i < names.length; i++) {
    for (let j = i + 1; j < names.length; j++) {
      const a = pos[names[i]];
      const b = pos[names[j]];
      links.append(s('line', {x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: 'link unknown'}));
    }
  }
  for (const name of me ? names.slice(1) : []) {
    const p = peers.get(name);
    const a = pos[me];
    const b = pos[name];
    const kind = p ? (p.path === 'direct' ? 'direct' : p.path === 'relay' ? 'relay' : 'none') : 'none';
    links.append(s('line', {x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: 'link ' + kind, dataset: {peer: name}},
      s('title', {}, me + ' → ' + name + ': ' + (p ? p.path + (p.via ? ' via ' + p.via : '') + ', ' + fmtRTT(p.rtt_ms) : 'no peer'))));
    const mx = a.x + (b.x - a.x) * 0.55;
    const my = a.y + (b.y - a.y) * 0.55;
    const text = kind === 'none' ? 'no path' : (kind === 'relay' ? 'via ' + p.via + ' · ' : '') + fmtRTT(p.rtt_ms);
    const w = text.length * 6.6 + 12;
    labels.append(s('g', {class: 'link-label ' + kind, transform: `translate(${mx.toFixed(1)},${my.toFixed(1)})`},
      s('rect', {x: -w / 2, y: -10, width: w, height: 20, rx: 10}),
      s('text', {'text-anchor': 'middle', y: 4}, text)));
  }
  const dots = s('g', {class: 'nodes'});
  for (const name of names) {
    const n = byName.get(name);
    const p = pos[name];
    const health = n ? n.health : 'unknown';
    const r = name === me ? 22 : 18;
    // Labels sit outside the circle, away from the centre, so the links
    // (which run towards the centre) never cross them.
    const dx = p.x - W / 2;
    const dy = p.y - H / 2;
    const len = Math.hypot(dx, dy) || 1;
    const ux = names.length <= 1 ? 0 : dx / len;
    const uy = names.length <= 1 ? 1 : dy / len;
    const anchor = ux > 0.35 ? 'start' : ux < -0.35 ? 'end' : 'middle';
    const lx = p.x + ux * (r + 10);
    const ly = uy < -0.35 ? p.y - r - 26 : uy > 0.35 ? p.y + r + 18 : p.y - 4;
    dots.append(s('a', {href: '#/nodes/' + encodeURIComponent(name), class: 'mesh-node ' + health + (name === me ? ' me' : ''), dataset: {node: name}},
      s('circle', {cx: p.x, cy: p.y, r}),
      s('text', {x: lx, y: ly, 'text-anchor': anchor, class: 'node-name'}, name + (name === me ? ' (this node)' : '')),
      s('text', {x: lx, y: ly + 15, 'text-anchor': anchor, class: 'node-sub'},
        (n ? n.mesh_ip + ' · ' + n.raft_role : '')),
      s('title', {}, name + ': ' + health + (n && n.health_reason ? ' (' + n.health_reason + ')' : ''))));
  }
  // Fit the picture to its nodes (a triangle leaves the bottom empty).
  const ys = names.map((n) => pos[n].y);
  const top = Math.min(...ys) - 60;
  const height = Math.max(...ys) + 60 - top;
  return s('svg', {viewBox: `0 ${top.toFixed(0)} ${W} ${height.toFixed(0)}`, class: 'mesh-svg', role: 'img', 'aria-label': 'Mesh of ' + names.length + ' nodes'}, links, labels, dots);
}

registerPage({
  route: 'mesh',
  title: 'Mesh',
  nav: 30,
  mount(el, ctx) {
    const pic = h('div', {class: 'mesh-wrap'}, h('p', {class: 'muted'}, 'Loading…'));
    const list = h('tbody');
    el.append(
      h('div', {class: 'page-head'}, h('h1', {}, 'Mesh')),
      h('div', {class: 'card wide'}, pic,
        h('div', {class: 'legend'},
          h('span', {class: 'lg direct'}, 'direct'), h('span', {class: 'lg relay'}, 'relayed'),
          h('span', {class: 'lg none'}, 'no path'), h('span', {class: 'lg unknown'}, 'not measured from this node'))),
      h('div', {class: 'card wide'}, h('h2', {}, 'Links from this node'),
        h('div', {class: 'table-wrap'}, h('table', {class: 'grid'},
          h('thead', {}, h('tr', {}, h('th', {}, 'Peer'), h('th', {}, 'Path'), h('th', {class: 'num'}, 'RTT'), h('th', {class: 'hide-sm'}, 'Endpoint'))),
          list))));
    ctx.subscribe((st) => {
      if (!st.nodes) {
        if (st.error) pic.replaceChildren(errorBox(st.error));
        return;
      }
      pic.replaceChildren(draw(st));
      const peers = st.status ? st.status.peers : [];
      list.replaceChildren(...(peers.length ? peers.map((p) => h('tr', {},
        h('td', {}, p.name ? link('nodes/' + encodeURIComponent(p.name), p.name) : h('span', {class: 'muted'}, 'not in the cluster')),
        h('td', {}, h('span', {class: 'path ' + (p.path === 'direct' ? 'direct' : p.path === 'relay' ? 'relay' : 'none')}, p.path + (p.via ? ' via ' + p.via : ''))),
        h('td', {class: 'num'}, fmtRTT(p.rtt_ms)),
        h('td', {class: 'mono hide-sm'}, p.endpoint || '–'))) :
        [h('tr', {}, h('td', {colspan: 4, class: 'muted'}, st.status ? 'No peers.' : 'Paths are measured by each node; its own UI shows them.'))]));
    });
  },
});
