#!/usr/bin/env node
// Makes sure nats-server and redis-server (Debian's packages) are installed before the tests and
// `strata up` start private ones: as root it installs what is missing with apt-get; otherwise it
// says which command to run.
import { existsSync } from 'node:fs';
import { aptInstall } from './apt-install.mjs';

const dirs = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/usr/local/sbin', '/usr/bin', '/usr/local/bin']);
const has = (bin) => dirs.some((d) => d && existsSync(`${d}/${bin}`));
aptInstall([['nats-server', 'nats-server'], ['redis-server', 'redis-server']].filter(([bin]) => !has(bin)).map(([, pkg]) => pkg), 'strata');
