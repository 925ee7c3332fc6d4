// User access (issue 16): people's devices (laptops, phones) on wg1. Adding
// one shows its WireGuard config and QR code once: the private key is made
// on the node and kept nowhere.
import {registerPage, h, api, copyButton, fmtBytes, fmtSince, fmtTime, errorBox, confirmAction} from '../core.js';
import {poller} from './services.js';

function addForm(ctx, out, onAdded) {
  const name = h('input', {id: 'device-name', name: 'name', required: true, placeholder: 'alice-laptop',
    pattern: '[a-z0-9]([a-z0-9-]*[a-z0-9])?', maxlength: 63, autocomplete: 'off'});
  const via = h('select', {id: 'device-via', name: 'via'}, h('option', {value: ''}, 'this node'));
  const endpoint = h('input', {id: 'device-endpoint', name: 'endpoint', placeholder: 'the node\'s public address', autocomplete: 'off', spellcheck: 'false',
    title: 'host or host:port the device dials, when the entry node is behind a port forward or has a DNS name'});
  const allowPeers = h('input', {type: 'checkbox', id: 'device-allow-peers', name: 'allow_peers'});
  const submit = h('button', {class: 'btn primary', type: 'submit', id: 'device-add'}, 'Add device');
  const form = h('form', {class: 'form-row', id: 'device-form'},
    h('label', {}, 'Name', name), h('label', {}, 'Entry node', via), h('label', {}, 'Endpoint (optional)', endpoint),
    h('label', {class: 'check'}, allowPeers, ' may reach other devices that allow it'), submit);
  ctx.subscribe((store) => {
    const names = ((store.nodes && store.nodes.nodes) || []).map((n) => n.name).sort();
    const have = [...via.options].map((o) => o.value).slice(1);
    if (names.join() !== have.join()) {
      const keep = via.value;
      via.replaceChildren(h('option', {value: ''}, 'this node'), ...names.map((n) => h('option', {value: n}, n)));
      via.value = keep;
    }
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    out.replaceChildren(h('p', {class: 'muted'}, 'Adding…'));
    try {
      const r = await api('v1/access', {method: 'POST', signal: ctx.signal,
        body: {name: name.value.trim(), via: via.value, endpoint: endpoint.value.trim(), allow_peers: allowPeers.checked}});
      out.replaceChildren(configCard(r, 'Device ' + r.device.name + ' added',
        'Scan the QR code with the WireGuard app, or save the config as a file. The private key is shown only now; the cluster does not keep it.'));
      name.value = '';
      onAdded();
    } catch (e) {
      if (e.name !== 'AbortError') out.replaceChildren(errorBox(e));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

function configCard(r, title, note) {
  return h('div', {class: 'card wide result', id: 'device-config'},
    h('h2', {}, title),
    h('p', {}, 'Address ', h('code', {}, r.device.address), ', entering through ', h('strong', {}, r.device.via), '.'),
    h('div', {class: 'columns'},
      h('div', {}, h('div', {class: 'command-box'}, h('pre', {class: 'command', id: 'device-config-text'}, r.config), copyButton(() => r.config))),
      h('div', {}, h('img', {id: 'device-qr', alt: 'QR code of the WireGuard config', width: 256, height: 256,
        src: 'data:image/png;base64,' + r.qr_png}))),
    h('p', {class: 'muted small'}, note));
}

function handshake(d) {
  if (d.stats_error) return h('span', {class: 'muted', title: d.stats_error}, '?');
  if (!d.last_handshake) return h('span', {class: 'muted'}, 'never');
  return h('span', {title: fmtTime(d.last_handshake)}, fmtSince(d.last_handshake));
}

registerPage({
  route: 'access',
  title: 'Devices',
  nav: 55,
  modes: ['agent'],
  mount(el, ctx) {
    const tbody = h('tbody', {}, h('tr', {}, h('td', {colspan: 7, class: 'muted'}, 'Loading…')));
    const count = h('span', {class: 'muted'});
    const out = h('div', {id: 'device-result'});
    let load = () => {};
    el.append(
      h('div', {class: 'page-head'}, h('h1', {}, 'Devices'), count),
      h('p', {class: 'muted'}, 'Laptops and phones reach every node, pod and service of the cluster through WireGuard (wg1), and nothing else; devices do not see each other unless both allow it.'),
      h('div', {class: 'table-wrap'}, h('table', {class: 'grid devices-table'},
        h('thead', {}, h('tr', {}, h('th', {}, 'Device'), h('th', {}, 'Address'), h('th', {}, 'Entry node'),
          h('th', {}, 'Last handshake'), h('th', {class: 'num'}, 'Received'), h('th', {class: 'num'}, 'Sent'), h('th', {}, ''))),
        tbody)),
      h('div', {class: 'card wide'}, h('h2', {}, 'Add a device'), addForm(ctx, out, () => load())),
      out);
    load = async () => {
      try {
        const r = await api('v1/access', {signal: ctx.signal});
        const list = r.devices || [];
        count.textContent = list.length + ' device' + (list.length === 1 ? '' : 's');
        tbody.replaceChildren(...(list.length ? list.map((d) => h('tr', {class: 'device-row', dataset: {name: d.name}},
          h('td', {}, h('strong', {}, d.name), d.allow_peers ? h('div', {class: 'muted small'}, 'sees other devices') : null),
          h('td', {class: 'mono'}, d.address),
          h('td', {}, d.via),
          h('td', {class: 'handshake'}, handshake(d)),
          h('td', {class: 'num'}, fmtBytes(d.rx_bytes)),
          h('td', {class: 'num'}, fmtBytes(d.tx_bytes)),
          h('td', {}, confirmAction('Remove', 'Remove ' + d.name + '? It loses access at once.', async () => {
            await api('v1/access/' + encodeURIComponent(d.name), {method: 'DELETE', signal: ctx.signal});
            load();
          })))) :
          [h('tr', {}, h('td', {colspan: 7, class: 'muted'}, 'No devices yet.'))]));
      } catch (e) {
        if (e.name !== 'AbortError') tbody.replaceChildren(h('tr', {}, h('td', {colspan: 7}, errorBox(e))));
      }
    };
    poller(ctx, load);
  },
});
