import {registerPage, h, api, copyButton, fmtTime, errorBox, config, viaCloud} from '../core.js';

registerPage({
  route: 'tokens',
  title: 'Join tokens',
  nav: 50,
  mount(el, ctx) {
    const ttl = h('select', {name: 'ttl', id: 'token-ttl'},
      h('option', {value: '15m'}, '15 minutes'), h('option', {value: '1h', selected: true}, '1 hour'),
      h('option', {value: '24h'}, '1 day'), h('option', {value: '168h'}, '7 days'));
    const uses = h('input', {type: 'number', name: 'uses', id: 'token-uses', min: 1, max: 1000, value: 1, required: true});
    const submit = h('button', {class: 'btn primary', type: 'submit', id: 'token-create'}, 'Create token');
    const out = h('div', {id: 'token-result'});
    const form = h('form', {class: 'form-row', id: 'token-form'},
      h('label', {}, 'Valid for', ttl), h('label', {}, 'Joins', uses), submit);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      submit.disabled = true;
      out.replaceChildren(h('p', {class: 'muted'}, 'Creating…'));
      try {
        let tok = await api('v1/tokens', {method: 'POST', body: {ttl: ttl.value, uses: Number(uses.value)}, signal: ctx.signal});
        if (config.mode === 'cloud' && tok.kind) {
          tok = await viaCloud(tok, ctx.signal, (rec) => out.replaceChildren(h('p', {class: 'muted', id: 'token-waiting'},
            'Sent to the cluster as command ', h('code', {}, rec.id), '; waiting for it to apply it (it runs when the cluster is connected)…')));
        }
        const cmd = h('pre', {class: 'command', id: 'join-command'}, tok.join_command);
        out.replaceChildren(h('div', {class: 'card wide result'},
          h('h2', {}, 'Join command'),
          h('p', {}, 'Run this on the new machine (replace ', h('code', {}, 'NODE_NAME'), '). The token admits ', String(tok.uses),
            ' join' + (tok.uses === 1 ? '' : 's') + ' and expires ', h('strong', {}, fmtTime(tok.expires_at)), '.'),
          h('div', {class: 'command-box'}, cmd, copyButton(() => tok.join_command)),
          h('p', {class: 'muted small'}, 'The token is shown only now; the cluster keeps only its hash.')));
      } catch (e) {
        if (e.name !== 'AbortError') out.replaceChildren(errorBox(e));
      } finally {
        submit.disabled = false;
      }
    });
    el.append(h('h1', {}, 'Join tokens'),
      h('div', {class: 'card wide'},
        h('p', {}, 'A join token lets a new machine join this cluster through any member, without the cloud. It is one-time and expiring by default.'),
        config.mode === 'cloud' ? h('p', {class: 'muted small'}, 'From the cloud console the token is made by the cluster itself, through a cloud command.') : null,
        form),
      out);
  },
});
