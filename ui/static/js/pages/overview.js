import {registerPage, h, link, badge, errorBox} from '../core.js';
import {eventLine, isBadEvent} from './events.js';
import {cloudTile} from './cloud.js';

function tile(title, value, sub, cls) {
  return h('div', {class: 'tile' + (cls ? ' ' + cls : '')},
    h('div', {class: 'tile-title'}, title),
    h('div', {class: 'tile-value'}, value),
    sub ? h('div', {class: 'tile-sub muted'}, sub) : null);
}

registerPage({
  route: '',
  title: 'Overview',
  nav: 0,
  mount(el, ctx) {
    const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
    el.append(h('h1', {}, 'Overview'), body);
    ctx.subscribe((st) => {
      if (!st.nodes) {
        if (st.error) body.replaceChildren(errorBox(st.error));
        return;
      }
      const nodes = st.nodes.nodes;
      const count = {healthy: 0, degraded: 0, offline: 0};
      for (const n of nodes) count[n.health] = (count[n.health] || 0) + 1;
      const status = st.status;
      const leader = status ? status.raft.leader : (nodes.find((n) => n.raft_role === 'leader') || {}).name;
      const voters = nodes.filter((n) => n.raft_role !== 'nonvoter').length;
      const nonvoters = nodes.length - voters;
      const overall = count.offline ? 'offline' : count.degraded ? 'degraded' : 'healthy';
      const healthValue = h('span', {class: 'counts'},
        h('span', {class: 'count healthy', title: 'healthy'}, String(count.healthy)),
        h('span', {class: 'count degraded', title: 'degraded'}, String(count.degraded)),
        h('span', {class: 'count offline', title: 'offline'}, String(count.offline)));
      const tiles = h('div', {class: 'tiles'},
        tile('Cluster health', healthValue, 'healthy · degraded · offline', 'status-' + overall),
        tile('Leader', leader ? link('nodes/' + encodeURIComponent(leader), leader) : h('span', {class: 'bad-text'}, 'none'),
          status ? 'term ' + status.raft.term + ' · index ' + status.raft.applied_index : 'state index ' + st.nodes.index),
        tile('Nodes', String(nodes.length), voters + ' voter' + (voters === 1 ? '' : 's') +
          (nonvoters ? ' · ' + nonvoters + ' non-voter' + (nonvoters === 1 ? '' : 's') : '')),
        status ? tile('This node', link('nodes/' + encodeURIComponent(status.name), status.name),
          status.mesh_ip + ' · ' + status.raft.state + ' · ' + status.version) : null,
        tile('Cloud link', ...cloudTile(st.cloud)));

      const alerts = [];
      for (const n of nodes) {
        if (n.health !== 'healthy') {
          alerts.push(h('li', {class: 'alert ' + n.health},
            badge(n.health), ' ', link('nodes/' + encodeURIComponent(n.name), n.name), ' ',
            h('span', {class: 'muted'}, n.health_reason || '')));
        }
      }
      const dayAgo = Date.now() - 24 * 3600 * 1000;
      const bad = st.events.filter((e) => isBadEvent(e) && Date.parse(e.time) > dayAgo).slice(-8).reverse();
      for (const e of bad) {
        alerts.push(h('li', {class: 'alert event'}, eventLine(e)));
      }
      const recent = st.events.slice(-5).reverse().map((e) => h('li', {}, eventLine(e)));

      body.replaceChildren(tiles,
        h('div', {class: 'columns'},
          h('div', {class: 'card'}, h('h2', {}, 'Alerts'),
            alerts.length ? h('ul', {class: 'alerts'}, alerts) : h('p', {class: 'ok-text'}, 'All nodes healthy; nothing went wrong in the last 24 hours.')),
          h('div', {class: 'card'}, h('h2', {}, 'Recent events ', h('a', {href: '#/events', class: 'small'}, 'all')),
            recent.length ? h('ul', {class: 'events compact'}, recent) : h('p', {class: 'muted'}, 'No events yet.'))));
    });
  },
});
