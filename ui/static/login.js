// Sign-in page: posts the credential as JSON and returns to the page the
// user wanted (the #/route survives the redirect to here).
'use strict';
document.getElementById('login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  const err = document.getElementById('error');
  const btn = document.getElementById('submit');
  err.hidden = true;
  btn.disabled = true;
  try {
    const resp = await fetch('ui/login', {
      method: 'POST',
      credentials: 'same-origin',
      headers: {'Content-Type': 'application/json'},
      body: JSON.stringify({
        username: document.getElementById('username').value.trim(),
        password: document.getElementById('password').value,
      }),
    });
    if (resp.ok) {
      location.replace('./' + location.hash);
      return;
    }
    let msg = resp.status + ' ' + resp.statusText;
    try { msg = (await resp.json()).error || msg; } catch (e) { /* not JSON */ }
    err.textContent = msg.charAt(0).toUpperCase() + msg.slice(1) + '.';
    err.hidden = false;
    if (resp.status === 401) {
      const pw = document.getElementById('password');
      pw.select();
      pw.focus();
    }
  } catch (e) {
    err.textContent = 'Cannot reach the agent: ' + e.message;
    err.hidden = false;
  } finally {
    btn.disabled = false;
  }
});
