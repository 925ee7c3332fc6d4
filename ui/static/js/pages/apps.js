// Apps (issue 6): your own images, each in its own OSID namespace, with
// service instances' connection details injected (--use) as Secret
// references. In the cloud console deploys and deletes go as cloud
// commands (write waits for the result).
import {registerPage, h, api, link, kv, fmtSince, fmtTime, errorBox, confirmAction, write, waitingNote} from '../core.js';
import {workloadStatus, replicas, poller} from './services.js';

function deployForm(ctx) {
  const name = h('input', {id: 'app-name', name: 'name', required: true, placeholder: 'web', pattern: '[a-z0-9]([a-z0-9-]*[a-z0-9])?', maxlength: 40, autocomplete: 'off'});
  const image = h('input', {id: 'app-image', name: 'image', required: true, placeholder: 'ghcr.io/acme/web:1.4', autocomplete: 'off', spellcheck: 'false'});
  const port = h('input', {id: 'app-port', name: 'port', type: 'number', min: 1, max: 65535, placeholder: '8080'});
  const env = h('textarea', {id: 'app-env', name: 'env', rows: 3, placeholder: 'KEY=value, one per line', spellcheck: 'false'});
  const uses = h('div', {class: 'uses', id: 'app-uses'}, h('span', {class: 'muted small'}, 'Loading instances…'));
  const submit = h('button', {class: 'btn primary', type: 'submit', id: 'app-deploy'}, 'Deploy app');
  const out = h('div', {id: 'app-result'});
  const form = h('form', {class: 'stack-form', id: 'app-form'},
    h('div', {class: 'form-row'}, h('label', {}, 'Name', name), h('label', {class: 'grow'}, 'Image', image), h('label', {}, 'Port', port)),
    h('label', {}, 'Environment', env),
    h('fieldset', {}, h('legend', {}, 'Use service instances ', h('span', {class: 'muted small'}, 'their connection details arrive as environment variables from the instance\'s Secret')), uses),
    h('div', {class: 'form-row'}, submit), out);
  api('v1/services', {signal: ctx.signal}).then((all) => {
    const list = all.filter((s) => s.status !== 'deleting'); // cannot be used any more
    uses.replaceChildren(...(list.length ? list.map((s) => h('label', {class: 'check'},
      h('input', {type: 'checkbox', name: 'use', value: s.osid}), h('span', {class: 'mono'}, s.osid), ' ', h('span', {class: 'muted small'}, s.service))) :
      [h('span', {class: 'muted small'}, 'No service instances yet.')]));
  }).catch((e) => { if (e.name !== 'AbortError') uses.replaceChildren(errorBox(e)); });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const envMap = {};
    for (const line of env.value.split('\n')) {
      const l = line.trim();
      if (!l) continue;
      const i = l.indexOf('=');
      if (i <= 0) {
        out.replaceChildren(errorBox('Environment line "' + l + '" is not KEY=value.'));
        return;
      }
      envMap[l.slice(0, i).trim()] = l.slice(i + 1);
    }
    const body = {name: name.value.trim(), image: image.value.trim(), env: envMap,
      use: [...form.querySelectorAll('input[name=use]:checked')].map((c) => c.value)};
    if (port.value) body.port = Number(port.value);
    submit.disabled = true;
    out.replaceChildren(h('p', {class: 'muted'}, 'Deploying…'));
    try {
      const a = await write('v1/apps', {method: 'POST', body, signal: ctx.signal, onWait: (rec) => out.replaceChildren(waitingNote(rec))});
      ctx.navigate('#/apps/' + encodeURIComponent(a.osid));
    } catch (e) {
      if (e.name !== 'AbortError') out.replaceChildren(errorBox(e));
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}

registerPage({
  route: 'apps',
  title: 'Apps',
  nav: 36,
  mount(el, ctx) {
    const tbody = h('tbody', {}, h('tr', {}, h('td', {colspan: 6, class: 'muted'}, 'Loading…')));
    const count = h('span', {class: 'muted'});
    el.append(
      h('div', {class: 'page-head'}, h('h1', {}, 'Apps'), count),
      h('div', {class: 'table-wrap'}, h('table', {class: 'grid apps-table'},
        h('thead', {}, h('tr', {}, h('th', {}, 'App'), h('th', {}, 'Image'), h('th', {class: 'hide-sm'}, 'Uses'), h('th', {}, 'Status'),
          h('th', {class: 'num'}, 'Ready'), h('th', {class: 'hide-sm'}, 'Created'))),
        tbody)),
      h('div', {class: 'card wide'}, h('h2', {}, 'Deploy an app'), deployForm(ctx)));
    poller(ctx, async () => {
      try {
        const list = await api('v1/apps', {signal: ctx.signal});
        count.textContent = list.length + ' app' + (list.length === 1 ? '' : 's');
        tbody.replaceChildren(...(list.length ? list.map((a) => h('tr', {class: 'app-row ' + a.status, dataset: {osid: a.osid}},
          h('td', {}, link('apps/' + encodeURIComponent(a.osid), h('strong', {}, a.name)), h('div', {class: 'muted small mono'}, a.osid)),
          h('td', {class: 'mono small'}, a.image),
          h('td', {class: 'hide-sm'}, (a.uses || []).map((u, i) => [i ? ', ' : '', link('services/' + encodeURIComponent(u), u)])),
          h('td', {}, workloadStatus(a), a.reason ? h('div', {class: 'reason muted small'}, a.reason) : null),
          h('td', {class: 'num'}, replicas(a)),
          h('td', {class: 'hide-sm muted', title: fmtTime(a.created_at)}, fmtSince(a.created_at)))) :
          [h('tr', {}, h('td', {colspan: 6, class: 'muted'}, 'No apps yet.'))]));
      } catch (e) {
        if (e.name !== 'AbortError') tbody.replaceChildren(h('tr', {}, h('td', {colspan: 6}, errorBox(e))));
      }
    });
  },
});

registerPage({
  route: 'apps/:osid',
  title: 'App',
  mount(el, ctx) {
    const osid = ctx.params.osid;
    const title = h('h1', {}, osid);
    const actions = h('div', {class: 'head-actions'}, confirmAction('Delete',
      'Delete ' + osid + '? Its namespace and everything in it are removed.',
      async () => {
        await write('v1/apps/' + encodeURIComponent(osid), {method: 'DELETE', signal: ctx.signal, onWait: (rec) => body.prepend(waitingNote(rec))});
        ctx.navigate('#/apps');
      }));
    const body = h('div', {}, h('p', {class: 'muted'}, 'Loading…'));
    el.append(h('p', {class: 'crumbs'}, link('apps', 'Apps'), ' / '), h('div', {class: 'page-head'}, title, actions), body);
    poller(ctx, async () => {
      try {
        const a = await api('v1/apps/' + encodeURIComponent(osid), {signal: ctx.signal});
        title.textContent = a.name;
        const env = Object.entries(a.env || {});
        body.replaceChildren(h('div', {class: 'columns'},
          h('div', {class: 'card'}, h('h2', {}, 'App'), kv([
            ['Image', h('span', {class: 'mono'}, a.image)],
            ['Port', a.port ? String(a.port) : '–'],
            ['Status', h('span', {id: 'app-status'}, workloadStatus(a), ' ', a.reason ? h('span', {class: 'muted'}, a.reason) : null)],
            ['Ready', replicas(a)],
            a.conditions && a.conditions.length ? ['Conditions', h('ul', {class: 'plain'}, a.conditions.map((c) => h('li', {class: 'small'}, c)))] : null,
            ['Namespace', h('span', {class: 'mono'}, a.osid)],
            ['Created', fmtTime(a.created_at)],
          ])),
          h('div', {class: 'card'}, h('h2', {}, 'Environment'), kv([
            ['Uses', a.uses && a.uses.length ? h('span', {}, a.uses.map((u, i) => [i ? ', ' : '', link('services/' + encodeURIComponent(u), u)])) : '–'],
            a.injected_env && a.injected_env.length ? ['Injected (Secret refs)', h('span', {class: 'mono small'}, a.injected_env.join(' '))] : null,
            ['Set', env.length ? h('span', {class: 'mono small'}, env.map(([k, v]) => k + '=' + v).join(' ')) : '–'],
          ]))));
      } catch (e) {
        if (e.name === 'AbortError') return;
        if (e.status === 404) body.replaceChildren(h('p', {}, 'No app ', h('code', {}, osid), ' (deleted?). ', link('apps', 'All apps'), '.'));
        else body.replaceChildren(errorBox(e));
      }
    });
  },
});
