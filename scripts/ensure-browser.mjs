#!/usr/bin/env node
// Makes sure Debian's chromium is installed before the tests: test/dashboard.test.ts drives it
// headless with playwright-core (which never downloads a browser). As root it installs what is
// missing with apt-get (chromium, and a font so that pages render text); otherwise it says which
// command to run.
import { existsSync } from 'node:fs';
import { aptInstall } from './apt-install.mjs';

/** Where the dashboard test looks for it. */
const CHROMIUM = '/usr/bin/chromium';
const missing = [];
if (!existsSync(CHROMIUM)) missing.push('chromium');
if (!existsSync('/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf')) missing.push('fonts-dejavu-core');
aptInstall(missing, 'the dashboard test');
