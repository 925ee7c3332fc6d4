import {registerPage, h, link, fmtTime, fmtSince} from '../core.js';

const BAD_KINDS = new Set(['node_removed', 'voter_demoted', 'ui_password_reset']);

// isBadEvent marks what the overview lists as an alert.
export function isBadEvent(e) {
  if (e.kind === 'health_changed') return e.to === 'degraded' || e.to === 'offline';
  if (e.kind === 'path_changed') return e.to === 'none';
  return BAD_KINDS.has(e.kind);
}

// severity is ok, warn or bad: how an event's row is marked.
export function severity(e) {
  if (e.kind === 'health_changed') return e.to === 'offline' ? 'bad' : e.to === 'degraded' ? 'warn' : 'ok';
  if (e.kind === 'path_changed') return e.to === 'none' ? 'bad' : e.to === 'relay' ? 'warn' : 'ok';
  if (e.kind === 'node_removed') return 'bad';
  return BAD_KINDS.has(e.kind) ? 'warn' : 'ok';
}

// kindTag is an event's kind, coloured by its severity.
export function kindTag(e) {
  return h('span', {class: 'kind ' + e.kind + ' sev-' + severity(e)}, e.kind.replace(/_/g, ' '));
}

// eventLine is an event in a compact list: when, kind, what.
export function eventLine(e) {
  return [h('span', {class: 'when muted', title: fmtTime(e.time)}, fmtSince(e.time)), kindTag(e), ' ', describeEvent(e)];
}

// describeEvent renders an event's subject and change.
export function describeEvent(e) {
  const parts = [];
  if (e.node) parts.push(link('nodes/' + encodeURIComponent(e.node), e.node));
  if (e.from || e.to) {
    parts.push(' ', h('span', {class: 'change'}, (e.from || '–') + ' → ' + (e.to || '–')));
  }
  if (e.detail) parts.push(' ', h('span', {class: 'muted'}, e.detail));
  return h('span', {class: 'event-desc'}, parts);
}

registerPage({
  route: 'events',
  title: 'Events',
  nav: 40,
  mount(el, ctx) {
    const filter = h('input', {type: 'search', placeholder: 'Filter (kind, node, text)', 'aria-label': 'Filter events'});
    const liveText = h('span', {}, 'live');
    const live = h('span', {class: 'live'}, h('span', {class: 'dot'}), liveText);
    const tbody = h('tbody');
    const count = h('span', {class: 'muted'});
    let seen = -1;
    let drawnKey = '';
    let drawnAt = 0;
    const draw = (st, force) => {
      live.classList.toggle('off', !!st.error);
      liveText.textContent = st.error ? 'reconnecting…' : 'live';
      // Up to 1000 rows: redraw when events or the filter changed, and
      // every 10 s for the relative times, not on every 2 s refresh.
      const key = st.events.length + ':' + (st.events.length ? st.events[st.events.length - 1].seq : 0) + ':' + st.eventsLoaded;
      if (!force && key === drawnKey && Date.now() - drawnAt < 10000) return;
      drawnKey = key;
      drawnAt = Date.now();
      const q = filter.value.trim().toLowerCase();
      const rows = [];
      const evs = st.events.slice().reverse();
      for (const e of evs) {
        const text = [e.kind, e.node, e.from, e.to, e.detail].join(' ').toLowerCase();
        if (q && !text.includes(q)) continue;
        const fresh = seen >= 0 && e.seq > seen;
        rows.push(h('tr', {class: severity(e) + '-row' + (fresh ? ' fresh' : '')},
          h('td', {class: 'nowrap', title: e.time}, fmtTime(e.time), ' ', h('span', {class: 'muted small hide-sm'}, fmtSince(e.time))),
          h('td', {}, kindTag(e)),
          h('td', {}, describeEvent(e)),
          h('td', {class: 'num muted hide-sm'}, String(e.seq))));
      }
      if (evs.length) seen = Math.max(seen, evs[0].seq);
      tbody.replaceChildren(...(rows.length ? rows : [h('tr', {}, h('td', {colspan: 4, class: 'muted'}, st.eventsLoaded ? 'No events.' : 'Loading…'))]));
      count.textContent = rows.length + ' of ' + st.events.length;
    };
    filter.addEventListener('input', () => draw(ctx.store, true));
    el.append(
      h('div', {class: 'page-head'}, h('h1', {}, 'Events'), live),
      h('div', {class: 'toolbar'}, filter, count),
      h('div', {class: 'table-wrap'}, h('table', {class: 'grid events-table'},
        h('thead', {}, h('tr', {}, h('th', {}, 'Time'), h('th', {}, 'Kind'), h('th', {}, 'What'), h('th', {class: 'num hide-sm'}, 'Seq'))),
        tbody)));
    ctx.subscribe(draw);
  },
});
