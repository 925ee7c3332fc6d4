// Every page module registers itself; the navigation follows each page's
// nav order. Phase-2 pages (services, apps, cloud) are added here.
import './overview.js';
import './nodes.js';
import './mesh.js';
import './events.js';
import './tokens.js';
