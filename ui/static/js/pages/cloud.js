// Cloud link: connect with a registration token, live status, disconnect.
// The link is a mirror and remote control, never a dependency: every page
// here says so honestly when it is down.
import {registerPage, h, api, kv, statusBadge, fmtSince, fmtIn, fmtTime, fmtBytes, errorBox, confirmAction, config} from '../core.js';

const STATE = {
  not_registered: ['not connected', 'unknown'],
  standby: ['standby', 'unknown'],
  connecting: ['connecting', 'degraded'],
  connected: ['connected', 'healthy'],
  backoff: ['retrying', 'degraded'],
  disconnected: ['disconnected', 'degraded'],
  revoked: ['revoked', 'offline'],
};

// What each level lets the cloud do (runos-agent cloud connect --allow).
const ALLOW = {
  read: 'read: the mirror only, no command runs',
  deploy: 'deploy: services and apps',
  admin: 'admin: services and apps, join tokens, node removal',
};

// cloudTile is the overview's summary of the link: [value, sub, tile class].
export function cloudTile(c) {
  if (!c) return ['unknown', 'cannot read the link status', ''];
  const [label, cls] = STATE[c.state] || [c.state, 'unknown'];
  const value = h('span', {class: 'link-state ' + cls, 'data-state': c.state}, label);
  if (!c.registered) return [value, 'the cluster runs fully on its own', 'cloud'];
  let sub;
  if (c.state === 'connected') sub = 'since ' + fmtSince(c.since) + (c.pending ? ' · ' + c.pending + ' to send' : ' · in sync');
  else if (c.state === 'standby') {
    // A follower cannot see the leader's session; the last acknowledgement
    // in the shared state says whether the cloud is keeping up.
    sub = (c.holder ? c.holder + ' (leader) holds it' : 'the leader holds it') + (c.ack_time ? ' · last ack ' + fmtSince(c.ack_time) : '');
  }
  else if (c.state === 'backoff') sub = 'next try ' + (c.next_retry ? fmtIn(c.next_retry) : 'soon') + (c.pending ? ' · ' + c.pending + ' queued' : '');
  else if (c.state === 'disconnected') sub = 'last seen ' + fmtSince(c.since);
  else sub = c.pending ? c.pending + ' changes queued' : '';
  return [value, sub, 'cloud status-' + (cls === 'unknown' ? 'none' : cls)];
}

function statusCard(c) {
  const [label, cls] = STATE[c.state] || [c.state, 'unknown'];
  return h('div', {class: 'card wide', id: 'cloud-status'},
    h('h2', {}, 'Link'),
    kv([
      ['State', h('span', {}, statusBadge(label, cls), ' ', c.state === 'standby' && c.holder ? h('span', {class: 'muted'}, 'only the leader (' + c.holder + ') holds the session; this node takes over if it becomes leader') : null)],
      ['Cloud', h('span', {class: 'mono', id: 'cloud-url'}, c.url)],
      c.cloud_cluster_id ? ['Cloud cluster ID', h('span', {class: 'mono'}, c.cloud_cluster_id)] : null,
      c.allow ? ['Cloud may', h('span', {id: 'cloud-allow'}, ALLOW[c.allow] || c.allow, h('span', {class: 'muted'}, ' · changed only here, with runos-agent cloud allow read|deploy|admin'))] : null,
      c.rotate_pending ? ['Credential', h('span', {class: 'muted', id: 'cloud-rotate'}, 're-issue pending: the leader\'s session renews it')] : null,
      ['Since', c.since ? fmtTime(c.since) + ' (' + fmtSince(c.since) + ')' : '–'],
      c.next_retry ? ['Next retry', h('span', {id: 'cloud-retry'}, fmtTime(c.next_retry) + ' (' + fmtIn(c.next_retry) + ')')] : null,
      ['Pending changes', h('span', {id: 'cloud-pending'}, String(c.pending), c.pending ? h('span', {class: 'muted'}, ' not yet acknowledged; they stay queued in Raft until the cloud has them') : h('span', {class: 'muted'}, ' · the cloud has everything'))],
      ['Last acknowledged', c.ack_time ? 'state index ' + c.ack_index + ', ' + fmtSince(c.ack_time) :
        (c.ack_index ? 'state index ' + c.ack_index : (c.state === 'connected' && !c.pending ? 'the first session sent a full copy' : 'nothing yet'))],
      c.last_error ? ['Last error', h('span', {class: 'bad-text', id: 'cloud-error'}, c.last_error)] : null,
      config.mode === 'agent' ? ['Traffic (this node)', '↑ ' + fmtBytes(c.bytes_sent) + ' · ↓ ' + fmtBytes(c.bytes_received)] : null,
      c.registered_at ? ['Registered', fmtTime(c.registered_at)] : null,
    ]));
}

registerPage({
  route: 'cloud',
  title: 'Cloud',
  nav: 60,
  mount(el, ctx) {
    const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
    const actions = h('div', {class: 'head-actions'});
    el.append(h('div', {class: 'page-head'}, h('h1', {}, 'Cloud'), actions), body);
    const intro = h('p', {class: 'muted'}, 'The cloud mirrors nodes, health and events and can send commands. It is never a dependency: everything here works while it is down, and changes queue in Raft until it is back.');

    // The connect form is built once so typing survives live refreshes.
    const url = h('input', {id: 'cloud-url-input', name: 'url', type: 'url', required: true, placeholder: 'https://cloud.example:8443', autocomplete: 'off'});
    const token = h('input', {id: 'cloud-token-input', name: 'token', required: true, placeholder: 'RC1…', autocomplete: 'off', spellcheck: 'false'});
    const submit = h('button', {class: 'btn primary', type: 'submit', id: 'cloud-connect'}, 'Connect');
    const formOut = h('div');
    const form = h('form', {class: 'form-row stack', id: 'cloud-form'}, h('label', {class: 'grow'}, 'Cloud URL', url), h('label', {class: 'grow'}, 'Registration token', token), submit);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      formOut.replaceChildren(h('p', {class: 'muted'}, 'Registering with the cloud…'));
      try {
        const st = await api('v1/cloud/connect', {method: 'POST', body: {url: url.value.trim(), token: token.value.trim()}, signal: ctx.signal});
        token.value = '';
        formOut.replaceChildren();
        ctx.store.cloud = st;
        draw(st);
        ctx.refresh();
      } catch (e) {
        if (e.name !== 'AbortError') formOut.replaceChildren(errorBox(e));
      } finally {
        submit.disabled = false;
      }
    });
    const connectCard = h('div', {class: 'card wide'}, h('h2', {}, 'Connect to a cloud'),
      h('p', {}, 'Create a registration token in the cloud console (or ', h('code', {}, 'runos-cloud token create --cluster NAME'), ') and paste it with the cloud\'s URL. The token carries the cloud\'s CA fingerprint, so the server is verified before anything is sent.'),
      form, formOut);

    let shown = '';
    const draw = (c) => {
      if (!c) {
        body.replaceChildren(intro, errorBox('Cannot read the cloud link status.'));
        return;
      }
      if (!c.registered) {
        if (shown !== 'form') {
          shown = 'form';
          actions.replaceChildren();
          body.replaceChildren(intro, connectCard);
        }
        return;
      }
      if (shown !== 'status' && config.mode === 'agent') {
        actions.replaceChildren(confirmAction('Disconnect',
          'Forget the cloud registration? The cloud stops receiving changes and can no longer send commands; connecting again needs a new token.',
          async () => {
            const st = await api('v1/cloud/disconnect', {method: 'POST', signal: ctx.signal});
            ctx.store.cloud = st;
            draw(st);
            ctx.refresh();
          }));
      }
      shown = 'status';
      body.replaceChildren(intro, statusCard(c));
    };
    ctx.subscribe((st) => {
      if (st.error && !st.cloud) {
        body.replaceChildren(errorBox(st.error));
        return;
      }
      draw(st.cloud);
    });
  },
});
