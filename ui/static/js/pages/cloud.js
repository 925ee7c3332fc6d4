import {registerPage} from '../core.js';
