// Every page module registers itself with registerPage (core.js); the
// navigation follows each page's `nav` order, routes are '#/route/:param'.
//
// Adding a page (services.js, apps.js and cloud.js are examples):
//   1. pages/services.js: registerPage({route: 'services', title: 'Services',
//      nav: 20, mount(el, ctx) {...}}) and a detail page with route
//      'services/:osid' (no nav). Read with api('v1/services'), change with
//      api('v1/services', {method: 'POST', body}) — the helper adds the
//      CSRF token, sends 401s to the sign-in page and turns error answers
//      into ApiError(status, message) to show with errorBox(e).
//   2. Live data: ctx.subscribe(fn) runs fn after every refresh (2 s, and
//      at once after each event); poll page-specific endpoints in it or
//      with setInterval + ctx.signal for cleanup. Return a cleanup function
//      from mount if the page starts anything else.
//   3. Destructive actions: confirmAction(label, question, async () => ...).
//      Secrets on request: fetch 'v1/services/ID?reveal=1' only on a click.
//   4. Servers: the cloud console serves these pages too (config.mode
//      'cloud', answered from its mirror). A page the mirror cannot answer
//      says so with modes: ['agent']; a write there comes back 202 with a
//      cloud command to follow at v1/commands/ID: write() in core.js waits
//      for its result (services.js, apps.js).
//   5. Import the module below.
import './overview.js';
import './nodes.js';
import './mesh.js';
import './events.js';
import './tokens.js';
import './cloud.js';
import './services.js';
import './apps.js';
import './access.js';
